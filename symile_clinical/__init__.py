"""symile_clinical."""
