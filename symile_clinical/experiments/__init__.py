"""Experiments: the XOR reproduction and the study's cells."""
