"""Fit a (tiny) model's VAE to a prepared dataset, so that a small offline model decodes images that mean
something. Real Stable Diffusion VAEs need no such step; the demo and the learning benchmark do."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data import IndexStream, PreparedSplit

log = logging.getLogger(__name__)


def fit_vae(
    model: str | Path,
    data: str | Path,
    steps: int = 600,
    batch: int = 16,
    lr: float = 1e-3,
    kl_weight: float = 1e-6,
    seed: int = 0,
) -> float:
    """Train `<model>/vae` on `<data>/train` (L1 + MSE reconstruction, a light KL term) and save it in place.
    Sets the latent scaling factor from the fitted latents (as SD's 0.18215 was chosen). Returns the final
    reconstruction error (mean absolute, in [-1, 1] units)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae")
    split = PreparedSplit.load(data, "train")
    size = split.native_resolution()
    images = torch.stack([split.image(i, size) for i in range(len(split))])
    order = IndexStream(len(split), seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    error = float("nan")
    bar = tqdm(range(steps), desc="fit VAE", unit="step", dynamic_ncols=True)
    for step in bar:
        x = images[order.take(step * batch, batch)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=torch.Generator().manual_seed(seed * 1000 + step))).sample
        l1 = F.l1_loss(recon, x)
        loss = l1 + F.mse_loss(recon, x) + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        error = l1.item()
        bar.set_postfix(l1=f"{error:.4f}")
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i : i + 64]).latent_dist.mean for i in range(0, len(images), 64)])
    if vae.config.shift_factor is not None:  # SD 3's VAE centres its latents too: (z - shift) * scale
        vae.register_to_config(shift_factor=float(latents.mean()))
        latents = latents - latents.mean()
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    vae.register_to_config(_name_or_path=Path(model).name)  # where it was loaded from: not the user's directories
    vae.save_pretrained(Path(model) / "vae", safe_serialization=True)
    log.info("fitted the VAE of %s: L1 %.4f, scaling factor %.4f", model, error, vae.config.scaling_factor)
    return error
