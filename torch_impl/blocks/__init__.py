"""PyTorch block twins."""
