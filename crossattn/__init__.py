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


def _on_amd_cpu() -> bool:
    try:
        with open("/proc/cpuinfo", "rb") as info:
            return b"AuthenticAMD" in info.read(4096)
    except OSError:
        return False


# paddle's CPU wheels compute convolutions and matrix products with Intel's MKL-ML
# (paddle/libs/libmklml_intel.so), which takes a slow generic code path on AMD CPUs.
# MKL_DEBUG_CPU_TYPE=5 makes it use its AVX2 kernels there: measured on an AMD EPYC
# (2 cores), a 3x3 convolution's forward+backward went from 228 to 80 ms and paddle's
# ResNet18 training from 8.1 to 24.5 img/s (docs/benchmarks.md). Intel CPUs ignore it;
# torch does not use that library. A user's own setting wins.
if _on_amd_cpu():
    os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
