"""crossattn: PaddlePaddle <-> PyTorch twins of vision attention blocks.

The core package never imports torch or paddle at import time, so specs can be
inspected and the CLI's help shown on a machine with one framework or none.
"""

import os

__version__ = "0.1.0"

# torch and paddle each bring an OpenMP runtime whose idle threads spin by
# default; with both loaded in one process they starve each other (3x slower
# checks measured on 2 cores). Passive waiting removes that. It must be set
# before either framework loads, and a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
