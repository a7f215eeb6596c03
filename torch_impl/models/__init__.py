"""PyTorch model twins."""
