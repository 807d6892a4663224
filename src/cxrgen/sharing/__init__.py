"""Sharing results the way the Hugging Face ecosystem does: model and dataset cards, Hub pushes."""
