"""Experiments: the XOR reproduction, the study's cells and summary, the study's report."""
