"""Speed and memory of a model's twins: forward and forward+backward, both frameworks side by side.

Each (model, framework) is measured in a fresh child process, so the peak
resident memory the child reports (its own ru_maxrss) is that measurement's
alone, and one framework's allocator never flatters the other.
In the child: build the model, cast it, place it, warm up, then time `repeat`
forwards (eval, no graph) and `repeat` forward+backward steps (train mode,
backward of the output's sum, no optimizer), synchronising the device after
each. Reported: median and range of each, parameters, forward FLOPs (torch's
FlopCounterMode on the torch twin: the twins compute the same), peak memory
(GPU: the allocator's peak; CPU: the child's peak RSS, with its RSS before the
timed runs), and paddle's time over torch's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from crossattn.errors import CrossattnError

RESULT_TAG = "CROSSATTN-BENCH "
FRAMEWORKS = ("torch", "paddle")
SCHEMA = "crossattn.bench/1"


@dataclasses.dataclass(frozen=True)
class BenchJob:
    """One model in one framework; travels to the child as JSON."""

    name: str
    model: dict[str, Any]  # {"spec": path} or {"torch": target, "paddle": target, "model_args": path | None}
    framework: str
    device: str
    dtype: str
    input_shape: tuple[int, ...]
    repeat: int = 5
    warmup: int = 2
    threads: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "BenchJob":
        return cls(**{**data, "input_shape": tuple(data["input_shape"])})


@dataclasses.dataclass
class Timing:
    """Seconds per call over the timed repeats."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def to_json(self) -> dict:
        return {"median_s": self.median, "min_s": self.low, "max_s": self.high, "samples_s": self.samples}


@dataclasses.dataclass
class Measurement:
    framework: str
    device: str  # as the framework names it, with threads on the CPU
    forward: Timing
    forward_backward: Timing
    parameters: int
    flops: float | None
    peak_bytes: int | None
    peak_kind: str  # "gpu allocator" | "process RSS"
    rss_before_bytes: int | None  # CPU: resident memory after building, before the timed runs
    build_s: float

    def to_json(self) -> dict:
        return {"framework": self.framework, "device": self.device, "forward": self.forward.to_json(),
                "forward_backward": self.forward_backward.to_json(), "parameters": self.parameters,
                "flops": self.flops, "peak_bytes": self.peak_bytes, "peak_kind": self.peak_kind,
                "rss_before_bytes": self.rss_before_bytes, "build_s": self.build_s}


@dataclasses.dataclass
class BenchRow:
    """One model: each framework's measurement and their ratio."""

    name: str
    input_shape: tuple[int, ...]
    dtype: str
    device: str
    results: dict[str, Measurement]

    @property
    def flops(self) -> float | None:
        return next((m.flops for m in self.results.values() if m.flops), None)

    @property
    def parameters(self) -> int | None:
        return next((m.parameters for m in self.results.values()), None)

    def ratio(self, what: str = "forward_backward") -> float | None:
        """paddle's median time over torch's (above 1: paddle is slower)."""
        if not all(fw in self.results for fw in FRAMEWORKS):
            return None
        torch_s = getattr(self.results["torch"], what).median
        return getattr(self.results["paddle"], what).median / torch_s if torch_s > 0 else None

    def to_json(self) -> dict:
        return {"name": self.name, "input_shape": list(self.input_shape), "dtype": self.dtype, "device": self.device,
                "parameters": self.parameters, "flops": self.flops,
                "ratio_paddle_over_torch": {"forward": self.ratio("forward"),
                                            "forward_backward": self.ratio("forward_backward")},
                "frameworks": {fw: m.to_json() for fw, m in self.results.items()}}


# --------------------------------------------------------------------------- parent side


def input_shape_for(base: Sequence[int] | None, batch: int | None, size: Sequence[int] | None,
                    name: str) -> tuple[int, ...]:
    """The model's input shape with --batch replacing N and --size the trailing spatial sizes."""
    if base is None:
        raise CrossattnError(f"{name}: no input shape: the spec has no `input_shape` (or pass --input-shape "
                             f"with your own models)")
    shape = list(base)
    if batch is not None:
        shape[0] = batch
    if size is not None:
        if len(size) > len(shape) - 2:
            raise CrossattnError(f"--size {'x'.join(map(str, size))}: {name} takes {len(shape) - 2} spatial "
                                 f"dimension(s) (input shape {list(base)})")
        shape[len(shape) - len(size):] = list(size)
    return tuple(shape)


def parse_size(text: str | None) -> tuple[int, ...] | None:
    """`HxW` (or `DxHxW`, or one number for all spatial sizes of a 2-D input: `64` = 64x64)."""
    if text is None:
        return None
    try:
        parts = tuple(int(p) for p in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise CrossattnError(f"--size {text!r}: expected HxW (e.g. 64x64), DxHxW, or one number") from None
    if any(p <= 0 for p in parts):
        raise CrossattnError(f"--size {text!r}: sizes must be positive")
    return parts * 2 if len(parts) == 1 else parts


def measure(job: BenchJob, timeout_s: float | None = None) -> Measurement:
    """Run `job` in a child process (which reports its own peak RSS)."""
    command = [sys.executable, "-m", "crossattn.bench", "--child", json.dumps(job.to_json())]
    env = dict(os.environ)
    if job.threads:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(job.threads)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise CrossattnError(f"bench {job.name} ({job.framework}) ran past {timeout_s:.0f} s and was stopped")
    tagged = [line for line in stdout.splitlines() if line.startswith(RESULT_TAG)]
    if process.returncode != 0 or not tagged:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {process.returncode}"
        if last.startswith("error: "):
            raise CrossattnError(f"bench {job.name} ({job.framework}): {last[len('error: '):]}")
        raise CrossattnError(f"bench {job.name} ({job.framework}) failed: {last}")
    data = json.loads(tagged[-1][len(RESULT_TAG):])
    peak = data["peak_bytes"] if job.device == "gpu" else data["peak_rss_bytes"]
    return Measurement(job.framework, data["device"], Timing(data["forward_s"]), Timing(data["forward_backward_s"]),
                       data["parameters"], data["flops"], peak,
                       "gpu allocator" if job.device == "gpu" else "process RSS", data["rss_before_bytes"],
                       data["build_s"])


def run_bench(jobs: Sequence[BenchJob], on_start: Callable[[BenchJob], None] | None = None,
              on_done: Callable[[BenchJob], None] | None = None, timeout_s: float | None = None) -> list[BenchRow]:
    """Measure every job (one child each, one after another: parallel runs would disturb the timings)."""
    rows: dict[tuple, BenchRow] = {}
    for job in jobs:
        if on_start is not None:
            on_start(job)
        result = measure(job, timeout_s)
        if on_done is not None:
            on_done(job)
        key = (job.name, job.input_shape, job.dtype, job.device)
        row = rows.setdefault(key, BenchRow(job.name, job.input_shape, job.dtype, job.device, {}))
        row.results[job.framework] = result
    return list(rows.values())


def machine() -> dict[str, Any]:
    """What the figures were measured on (load is recorded: other jobs make timings noisy)."""
    info: dict[str, Any] = {"machine": platform.machine(), "processor": _cpu_name(), "cores": os.cpu_count(),
                            "python": platform.python_version(), "platform": platform.platform()}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except (OSError, ValueError, AttributeError):
        pass
    info["versions"] = _versions()
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("torch", "paddlepaddle", "paddlepaddle-gpu", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def report_json(rows: Sequence[BenchRow], settings: dict[str, Any]) -> dict[str, Any]:
    return {"schema": SCHEMA, "settings": settings, "machine": machine(), "rows": [r.to_json() for r in rows]}


def _ms(timing: Timing | None) -> str:
    if timing is None:
        return "-"
    return f"{timing.median * 1e3:.1f} ({timing.low * 1e3:.1f}-{timing.high * 1e3:.1f})"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f}"


def table(rows: Sequence[BenchRow]) -> str:
    """A markdown table (readable in a terminal too): one line per model, both frameworks side by side."""
    head = ("| model | input | dtype | device | params (M) | GFLOPs | torch fwd ms | paddle fwd ms | "
            "torch fwd+bwd ms | paddle fwd+bwd ms | paddle/torch fwd+bwd | torch peak MiB | paddle peak MiB |")
    lines = [head, "|" + "---|" * 4 + "---:|" * 9]
    for row in rows:
        t, p = row.results.get("torch"), row.results.get("paddle")
        ratio = row.ratio()
        flops = row.flops
        lines.append(
            f"| {row.name} | {'x'.join(map(str, row.input_shape))} | {row.dtype} | {row.device} | "
            f"{row.parameters / 1e6:.2f} | {'-' if not flops else f'{flops / 1e9:.2f}'} | "
            f"{_ms(t and t.forward)} | {_ms(p and p.forward)} | {_ms(t and t.forward_backward)} | "
            f"{_ms(p and p.forward_backward)} | {'-' if ratio is None else f'{ratio:.2f}'} | "
            f"{_mib(t and t.peak_bytes)} | {_mib(p and p.peak_bytes)} |")
    return "\n".join(lines)


def plot(rows: Sequence[BenchRow], path: str | os.PathLike) -> bool:
    """Bar chart of median forward and forward+backward time per model and framework; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from crossattn.atomic import save_figure

    labels = [f"{r.name}\n{'x'.join(map(str, r.input_shape))}" for r in rows]
    series = [(fw, what) for what in ("forward", "forward_backward") for fw in FRAMEWORKS
              if any(fw in r.results for r in rows)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(rows) + 2), 4.2))
    width = 0.8 / max(len(series), 1)
    colours = {"torch": "#d9553b", "paddle": "#3b6fd9"}
    for i, (fw, what) in enumerate(series):
        values = [getattr(r.results[fw], what).median * 1e3 if fw in r.results else 0.0 for r in rows]
        positions = [j + (i - (len(series) - 1) / 2) * width for j in range(len(rows))]
        ax.bar(positions, values, width, label=f"{fw} {what.replace('_', '+')}", color=colours[fw],
               alpha=1.0 if what == "forward_backward" else 0.5)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    heights = [b.get_height() for b in ax.patches if b.get_height() > 0]
    if heights and max(heights) > 100 * min(heights):  # models of very different cost: keep all visible
        ax.set_yscale("log")
    ax.set_ylabel("median ms per call")
    ax.set_title(f"crossattn bench ({rows[0].device}, {rows[0].dtype})" if rows else "crossattn bench")
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        save_figure(fig, path, "--plot", dpi=110)
    finally:
        plt.close(fig)
    return True


# --------------------------------------------------------------------------- child side


def _rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _build(job: BenchJob) -> Any:
    """The model, through the same ModelPair every command uses."""
    from crossattn.model_pair import ModelPair

    if "spec" in job.model:
        from crossattn.spec import load_spec

        return ModelPair.from_spec(load_spec(job.model["spec"])).build(job.framework)
    model = job.model
    return ModelPair.from_factories(model["torch"], model["paddle"], model.get("model_args")).build(job.framework)


def run_child(job: BenchJob) -> dict[str, Any]:
    """The measurement itself (in the child process)."""
    import importlib

    import numpy as np

    from crossattn.frameworks import require

    require(job.framework)
    twin = importlib.import_module(f"{job.framework}_impl.bench")
    device = twin.setup(job.device, job.threads)
    started = time.perf_counter()
    model = _build(job)
    x = np.random.default_rng([0, 1]).standard_normal(job.input_shape).astype(job.dtype)
    model, tensor = twin.prepare(model, x, job.device, job.dtype)
    build_s = time.perf_counter() - started
    parameters = twin.parameters(model)
    flops = None
    if job.framework == "torch":
        flops = twin.flops(model, tensor)
    rss_before = _rss_bytes()
    twin.reset_peak_memory(job.device)

    def timed(step: Callable[[Any, Any], None]) -> list[float]:
        for _ in range(job.warmup):
            step(model, tensor)
        twin.synchronize(job.device)
        samples = []
        for _ in range(job.repeat):
            begin = time.perf_counter()
            step(model, tensor)
            twin.synchronize(job.device)
            samples.append(time.perf_counter() - begin)
        return samples

    forward_s = timed(twin.forward)
    forward_backward_s = timed(twin.forward_backward)
    return {"device": device, "forward_s": forward_s, "forward_backward_s": forward_backward_s,
            "parameters": parameters, "flops": flops, "peak_bytes": twin.peak_memory(job.device),
            "rss_before_bytes": rss_before if job.device == "cpu" else None, "build_s": build_s,
            "peak_rss_bytes": _peak_rss_bytes()}


def _peak_rss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def _child_main(argv: list[str]) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    job = BenchJob.from_json(json.loads(argv[argv.index("--child") + 1]))
    try:
        result = run_child(job)
    except CrossattnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(RESULT_TAG + json.dumps(result), flush=True)


if __name__ == "__main__":
    _child_main(sys.argv)
