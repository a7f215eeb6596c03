"""PaddlePaddle model twins."""
