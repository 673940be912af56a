"""Argparse for the app package's commands, one module per command."""
