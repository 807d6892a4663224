"""`cxrgen app`: a local web page over the library (datasets, generation, training runs, reports)."""
