"""Workflows that tie preprocessing to training: the demo, the study, the release import."""
