"""The objective: Symile and CLIP losses, similarity scores, the gather with gradients."""
