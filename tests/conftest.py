"""Tests run on the CPU; framework warnings are noise here."""

import os
import warnings

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
warnings.filterwarnings("ignore")
