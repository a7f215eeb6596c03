"""Tests run on the CPU; framework warnings are noise here."""

import os
import warnings

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before any framework loads; see crossattn/__init__.py
import crossattn  # noqa: E402,F401  (its environment defaults, e.g. MKL_DEBUG_CPU_TYPE on AMD, before a framework loads)
warnings.filterwarnings("ignore")
