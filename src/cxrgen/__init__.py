"""cxrgen: adapt pretrained Stable Diffusion models to generate labelled synthetic chest X-rays."""

__version__ = "0.1.0"
