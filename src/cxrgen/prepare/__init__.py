"""Preparing a release: its readers (readers/), filters, splits, quality control and image workers; `command.py` is
the entry."""
