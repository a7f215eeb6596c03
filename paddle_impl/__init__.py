"""PaddlePaddle twins of crossattn's blocks and models; mirrors torch_impl file for file."""
