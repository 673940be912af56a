"""Training: config, memmap data, augmentation, the trainer, encoder pretraining."""
