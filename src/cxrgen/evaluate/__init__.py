"""Evaluation of generated images and the report.

Each metric registers itself (`@METRICS.register`) in its own module. The loop below imports each module once:
its entry is the metric's one registration line, and the order here is the order of the sections in
metrics.json, the printed summary and the report (a loop, not import statements, which the import sorter would
put in alphabetical order).
"""

from importlib import import_module

for _module in ("fidelity", "diversity", "memorization", "adherence", "utility", "reid", "forgetting"):
    import_module(f"{__name__}.{_module}")
