"""crossattn: PaddlePaddle <-> PyTorch twins of vision attention blocks.

The core package never imports torch or paddle at import time, so specs can be
inspected and the CLI's help shown on a machine with one framework or none.
"""

__version__ = "0.1.0"
