"""On-disk formats: dataset and run directories, checkpoints (ours and Lightning), atomic writes."""
