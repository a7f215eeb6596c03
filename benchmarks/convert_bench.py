"""Time and peak memory of `crossattn convert` on a large model, in both directions.

Run: .venv/bin/python benchmarks/convert_bench.py [--spec se_resnet152] [--workdir DIR] [--verify] [--full-verify]

Each step runs in its own process, started by a small measuring process that
has no other child, so resource.getrusage(RUSAGE_CHILDREN).ru_maxrss is that
step's peak resident memory alone. Steps:

    baseline        import numpy, torch, paddle and the conversion code; nothing else (timed: every
                    conversion pays it once; the timed steps below import first, then start the clock)
    prepare         build the torch twin, give it seeded weights, torch.save a checkpoint
    twins           only build both twins and read their slots, as every conversion does first
    torch->paddle   the `convert` command (same click command as the CLI), .pt -> .pdparams
    paddle->torch   the same command, .pdparams -> .pt
    round trip      the torch checkpoint that came back equals the one written (exactly)
    verify          with --verify: torch->paddle again, with the default verification (file read back
                    and compared tensor by tensor, float32 eval forward of both twins)
    verify full     with --full-verify: the same plus the float64 forward of both twins

The conversion's own memory is its peak minus the baseline; the aim is to stay
under about twice the checkpoint's size. docs/convert.md records the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
RESULT_TAG = "RESULT "


# --------------------------------------------------------------------------- steps (one process each)


def step_baseline(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    _import_frameworks()
    return {"seconds": time.perf_counter() - started}


def _import_frameworks() -> None:
    """What every conversion imports first (a fixed cost of the process, about 3-5 s here)."""
    import numpy  # noqa: F401
    import paddle  # noqa: F401
    import torch  # noqa: F401

    import weight_transfer.convert  # noqa: F401
    from crossattn.cli_convert import convert_command  # noqa: F401
    from paddle_impl import adapter as paddle_adapter  # noqa: F401
    from torch_impl import adapter as torch_adapter  # noqa: F401


def step_prepare(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from crossattn import registry
    from crossattn.init import initial_state
    from crossattn.spec import load_spec, resolve_spec
    from torch_impl import adapter

    model = registry.build(load_spec(resolve_spec(args.spec)), "torch")
    state = initial_state(adapter.slots(model), adapter.state(model), "torch", seed=0, mode="check")
    del model
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, args.workdir / "model.pt")
    params = sum(int(np.prod(v.shape)) for v in state.values())
    return {"tensors": len(state), "values": params, "bytes": (args.workdir / "model.pt").stat().st_size}


def _run_command(src: Path, dst: Path, spec: str, verify: bool, extra: list[str] | None = None) -> dict:
    """The CLI's convert command, in this process, timed from just before it starts (frameworks imported)."""
    import contextlib
    import io

    from crossattn.cli_convert import convert_command

    _import_frameworks()

    out = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out):
        convert_command.main([str(src), str(dst), "--spec", spec, "--verify" if verify else "--no-verify",
                              *(extra or [])],
                             standalone_mode=False)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "bytes": dst.stat().st_size, "report": out.getvalue().strip().splitlines()}


def step_torch_to_paddle(args: argparse.Namespace) -> dict:
    return _run_command(args.workdir / "model.pt", args.workdir / "model.pdparams", args.spec, verify=False)


def step_paddle_to_torch(args: argparse.Namespace) -> dict:
    return _run_command(args.workdir / "model.pdparams", args.workdir / "back.pt", args.spec, verify=False)


def step_verify(args: argparse.Namespace) -> dict:
    return _run_command(args.workdir / "model.pt", args.workdir / "verified.pdparams", args.spec, verify=True)


def step_verify_full(args: argparse.Namespace) -> dict:
    return _run_command(args.workdir / "model.pt", args.workdir / "verified64.pdparams", args.spec, verify=True,
                        extra=["--full-verify"])


def step_twins(args: argparse.Namespace) -> dict:
    """Only the part of a conversion that builds both twins to read their slots."""
    from crossattn.model_pair import ModelPair
    from crossattn.spec import load_spec, resolve_spec
    
    twins = ModelPair.from_spec(load_spec(resolve_spec(args.spec)))
    _import_frameworks()
    started = time.perf_counter()
    twins.slots("torch")
    twins.slots("paddle")
    return {"seconds": time.perf_counter() - started}


def step_round_trip(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    first = torch.load(args.workdir / "model.pt", weights_only=True, mmap=True)
    back = torch.load(args.workdir / "back.pt", weights_only=True, mmap=True)
    same = set(first) == set(back) and all(np.array_equal(first[k].numpy(), back[k].numpy()) for k in first)
    return {"exact": bool(same)}


STEPS = {"baseline": step_baseline, "prepare": step_prepare, "twins": step_twins,
         "torch->paddle": step_torch_to_paddle,
         "paddle->torch": step_paddle_to_torch, "round trip": step_round_trip, "verify": step_verify,
         "verify full": step_verify_full}


# --------------------------------------------------------------------------- measuring


def measure(step: str, args: argparse.Namespace) -> dict:
    """Run `step` in a child of a fresh measuring process; its ru_maxrss is the step's alone."""
    command = [sys.executable, str(SCRIPT), "--measure", step, "--spec", args.spec, "--workdir", str(args.workdir)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if done.returncode != 0 or not lines:
        sys.exit(f"step {step} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}")
    result = json.loads(lines[-1][len(RESULT_TAG):])
    result["process_seconds"] = wall
    return result


def run_measured(step: str, args: argparse.Namespace) -> None:
    """The measuring process: start the step, wait, report the child's peak RSS."""
    command = [sys.executable, str(SCRIPT), "--step", step, "--spec", args.spec, "--workdir", str(args.workdir)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        print(done.stdout, done.stderr[-4000:])
        sys.exit(done.returncode)
    tagged = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
    result = json.loads(tagged[-1][len(RESULT_TAG):])
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    print(RESULT_TAG + json.dumps(result))


def run_step(step: str, args: argparse.Namespace) -> None:
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import warnings

    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(ROOT))
    print(RESULT_TAG + json.dumps(STEPS[step](args)))


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def report(args: argparse.Namespace) -> None:
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB memory, "
          f"python {platform.python_version()}")
    results = {"baseline": measure("baseline", args), "prepare": measure("prepare", args)}
    size = results["prepare"]["bytes"]
    print(f"model: spec {args.spec}, {results['prepare']['tensors']} tensors, "
          f"{results['prepare']['values'] / 1e6:.1f}M values; torch checkpoint {_mib(size)}")
    base = results["baseline"]["peak_rss_mib"]
    print(f"baseline (import numpy, torch, paddle, crossattn): {results['baseline']['seconds']:.2f} s, "
          f"peak RSS {base:.0f} MiB")
    steps = (["twins", "torch->paddle", "paddle->torch", "round trip"] + (["verify"] if args.verify else [])
             + (["verify full"] if args.full_verify else []))
    for step in steps:
        results[step] = measure(step, args)
        r = results[step]
        if step == "round trip":
            print(f"round trip torch->paddle->torch exact: {r['exact']}")
            continue
        if step == "twins":
            print(f"building both twins for their slots (part of each conversion): {r['seconds']:.2f} s, "
                  f"peak RSS baseline + {r['peak_rss_mib'] - base:.0f} MiB")
            continue
        own = r["peak_rss_mib"] - base
        print(f"{step:<14} {r['seconds']:.2f} s in the command after imports ({r['process_seconds']:.1f} s with process start), "
              f"wrote {_mib(r['bytes'])}; peak RSS {r['peak_rss_mib']:.0f} MiB = baseline + {own:.0f} MiB "
              f"= {own * 2**20 / size:.2f} x checkpoint")
    if args.json:
        Path(args.json).write_text(json.dumps({"spec": args.spec, "results": results}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="se_resnet152", help="shipped spec name or spec file of the model")
    parser.add_argument("--workdir", type=Path, default=None, help="where the checkpoints go (default: a temp dir)")
    parser.add_argument("--verify", action="store_true", help="also time a conversion with verification")
    parser.add_argument("--full-verify", action="store_true", help="also time one with --full-verify")
    parser.add_argument("--json", default=None, help="write every figure to this JSON file")
    parser.add_argument("--step", choices=list(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=list(STEPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        run_step(args.step, args)
    elif args.measure:
        run_measured(args.measure, args)
    elif args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report(args)
    else:
        with tempfile.TemporaryDirectory(prefix="convert_bench.") as tmp:
            args.workdir = Path(tmp)
            report(args)


if __name__ == "__main__":
    main()
