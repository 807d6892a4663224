"""Training: the trainer, the registered methods (methods/), caches, checkpoints and logs; `command.py` is the entry."""
