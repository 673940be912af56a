"""Argparse for the preprocessing commands (synth, preprocess), one module per command."""
