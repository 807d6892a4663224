"""Models below the stages: loading and identity, LoRA files, sampling, text encoding, what a run samples from, and
the random architectures of tests and benchmarks."""
