"""Evaluation of generated images and the report."""
