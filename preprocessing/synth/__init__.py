"""Synthetic cohort written in MIMIC's own file formats and layouts."""
