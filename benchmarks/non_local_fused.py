"""Peak memory and time of the non-local block's explicit and fused paths, forward + backward.

Each (framework, attention_impl, size) runs in its own subprocess, so one measurement cannot
raise another's high-water mark. In the child: build the block (embedded gaussian, no
sub-sampling, so the explicit affinity is N x N), make the input, run one step on an 8x8 crop
(kernels, thread pools and lazy state set up), reset the kernel's RSS high-water mark (VmHWM,
via /proc/self/clear_refs) and read the RSS, run one forward + backward in training mode, and
report VmHWM minus that RSS as the step's peak memory; then --repeats more steps are timed
(median and spread). On a GPU the allocator's peak over what was allocated before replaces RSS.

    python benchmarks/non_local_fused.py --sizes 64,128 [--frameworks torch,paddle] [--device cpu]
        [--channels 64] [--batch 1] [--dtype float32] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> None:
    """Set the kernel's high-water mark (VmHWM) to the current RSS, so the peak is this step's."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(framework: str, impl: str, size: int, channels: int, batch: int, dtype: str, device: str,
          repeats: int) -> dict:
    import numpy as np

    from crossattn import registry
    from crossattn.blocks.non_local import NonLocalOptions
    from crossattn.spec import Spec

    options = NonLocalOptions(in_channels=channels, mode="embedded_gaussian", sub_sample=False,
                              attention_impl=impl)
    spec = Spec("non_local", options, name="bench", input_shape=(batch, channels, size, size))
    x_np = np.random.default_rng(0).standard_normal(spec.input_shape).astype(dtype)
    warm_np = x_np[:, :, :8, :8].copy()  # one small step first: kernels, pools and lazy state set up
    model = registry.build(spec, framework)
    if framework == "torch":
        import torch

        dev = torch.device("cuda" if device == "gpu" else "cpu")
        model = model.to(dev, getattr(torch, dtype)).train()
        x = torch.tensor(x_np, device=dev, requires_grad=True)
        warm = torch.tensor(warm_np, device=dev, requires_grad=True)

        def step(x=x) -> None:
            model(x).sum().backward()
            if dev.type == "cuda":
                torch.cuda.synchronize()

        def gpu_reset() -> int:
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()

        def gpu_peak() -> int:
            return torch.cuda.max_memory_allocated()

    else:
        import paddle

        paddle.set_device("gpu" if device == "gpu" else "cpu")
        model.to(dtype=dtype)
        model.train()
        x = paddle.to_tensor(x_np, stop_gradient=False)
        warm = paddle.to_tensor(warm_np, stop_gradient=False)

        def step(x=x) -> None:
            model(x).sum().backward()
            if device == "gpu":
                paddle.device.synchronize()

        def gpu_reset() -> int:
            paddle.device.cuda.reset_max_memory_allocated()
            return paddle.device.cuda.memory_allocated()

        def gpu_peak() -> int:
            return paddle.device.cuda.max_memory_allocated()

    step(warm)
    if device != "gpu":
        _reset_peak_rss()
    before = gpu_reset() if device == "gpu" else _rss_bytes()
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    peak = (gpu_peak() if device == "gpu" else _peak_rss_bytes()) - before
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"framework": framework, "impl": impl, "size": size, "positions": size * size,
            "peak_bytes": peak, "first_step_s": first, "median_step_s": statistics.median(times) if times else first,
            "spread_s": (max(times) - min(times)) if times else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128", help="square feature-map sides, e.g. 64,128")
    parser.add_argument("--frameworks", default="torch,paddle")
    parser.add_argument("--impls", default="explicit,fused")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        framework, impl, size = args.child.split(":")
        print(json.dumps(child(framework, impl, int(size), args.channels, args.batch, args.dtype, args.device,
                               args.repeats)))
        return
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for framework in args.frameworks.split(","):
            for impl in args.impls.split(","):
                cmd = [sys.executable, __file__, "--child", f"{framework}:{impl}:{size}", "--channels",
                       str(args.channels), "--batch", str(args.batch), "--dtype", args.dtype, "--device",
                       args.device, "--repeats", str(args.repeats)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    rows.append({"framework": framework, "impl": impl, "size": size,
                                 "error": done.stderr.strip().splitlines()[-1:] or ["failed"]})
                    print(f"{framework:6} {impl:8} {size}x{size}: failed: {rows[-1]['error']}", flush=True)
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{framework:6} {impl:8} {size}x{size} (N={size * size:6d}): peak {row['peak_bytes'] / 2**20:8.1f} MiB"
                      f"  step {row['median_step_s']:.3f} s (spread {row['spread_s']:.3f}, first {row['first_step_s']:.3f})",
                      flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.platform(), "cpus": os.cpu_count(), "args": vars(args), "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
