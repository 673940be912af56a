"""Subcommand registrations: argparse only, heavy imports happen when a command runs."""
