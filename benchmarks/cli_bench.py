"""Times `crossattn --help` and `crossattn specs` (must stay well under a second) and `crossattn check --all`.

Run: .venv/bin/python benchmarks/cli_bench.py [--repeat 5]
Prints one line per measurement; docs/benchmarks.md records the figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

CROSSATTN = [str(Path(sys.executable).with_name("crossattn"))]


def timed(args: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    result = subprocess.run(CROSSATTN + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started, result.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-check", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    helps = [timed(["--help"])[0] for _ in range(args.repeat)]
    print(f"crossattn --help: best {min(helps):.3f}s, median {sorted(helps)[len(helps) // 2]:.3f}s "
          f"over {args.repeat} runs")
    listed = [timed(["specs"])[0] for _ in range(args.repeat)]
    print(f"crossattn specs: best {min(listed):.3f}s, median {sorted(listed)[len(listed) // 2]:.3f}s "
          f"over {args.repeat} runs")
    if not args.skip_check:
        seconds, code = timed(["check", "--all"])
        print(f"crossattn check --all: {seconds:.1f}s (exit status {code})")


if __name__ == "__main__":
    main()
