"""PyTorch twins of crossattn's blocks and models; mirrors paddle_impl file for file."""
