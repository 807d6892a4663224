"""Generation of labelled synthetic images."""
