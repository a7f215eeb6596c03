"""PaddlePaddle block twins."""
