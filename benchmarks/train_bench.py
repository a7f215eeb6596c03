"""Training throughput of the twin loops and their overhead over a bare training loop.

For each framework: the seed-004 baseline (resnet18_baseline, 96 px, batch 32,
Adam) trains for --steps steps through the real loop (uint8 gather, resize,
normalise, per-step learning rate, running loss/accuracy) on synthetic
CIFAR-shaped data, then for --steps steps through a bare loop
(zero_grad, forward, cross-entropy, backward, step) on one pre-made batch.
Both start after --warmup untimed steps.

    python benchmarks/train_bench.py --steps 12 --warmup 2 --rounds 3 [--frameworks torch,paddle] [--device cpu]

Loop and bare steps alternate in --rounds rounds; each side's best round is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from crossattn.spec import load_spec, resolve_spec
from crossattn.training import runner
from crossattn.training.config import load_train_config, resolve_train_config


def bare_loop(framework: str, trainer, x, labels):
    """A function running n plain steps on one device-resident batch (and waiting for the device)."""
    model, optimizer = trainer.model, trainer.optimizer
    if framework == "torch":
        import torch
        import torch.nn.functional as F

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), labels).backward()
            optimizer.step()

        sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    else:
        import paddle
        import paddle.nn.functional as F

        def step() -> None:
            optimizer.clear_grad(set_to_zero=False)
            F.cross_entropy(model(x), labels).backward()
            optimizer.step()

        sync = paddle.device.synchronize if "gpu" in str(trainer.device) else (lambda: None)

    def run(n: int) -> None:
        model.train()
        for _ in range(n):
            step()
        sync()

    return run


def timed(run, n: int) -> float:
    started = time.perf_counter()
    run(n)
    return (time.perf_counter() - started) / n


def bench(framework: str, spec_name: str, steps: int, warmup: int, rounds: int, device: str) -> dict[str, float]:
    """Per-step seconds of the loop and of the bare loop, measured in alternating rounds; the best round counts.

    Alternating and taking the best round keeps load from other processes on a
    shared machine from landing on one side only.
    """
    per_round = max(steps // rounds, 1)
    config = load_train_config(resolve_train_config("seed004")).replace(
        dataset="synthetic", synthetic_train=32 * (warmup + per_round * rounds), synthetic_test=32,
        log_every=10**6)
    train_set, test_set = runner.load_datasets(config)
    module = runner.twin(framework)
    with module.session():
        trainer = module.Trainer(load_spec(resolve_spec(spec_name)), config, device, train_set, test_set)
        plan = list(runner.epoch_plan(config, train_set, 0))
        trainer.train_epoch(plan[:warmup], lambda *a: None)
        indices = plan[0][0]
        x = trainer.batch(trainer.train_images, indices, None)
        if framework == "torch":
            labels = trainer.train_labels[indices]
        else:
            import paddle

            labels = paddle.gather(trainer.train_labels, paddle.to_tensor(indices))
        bare = bare_loop(framework, trainer, x, labels)
        bare(1)
        loop_times, bare_times = [], []
        for r in range(rounds):
            chunk = plan[warmup + r * per_round: warmup + (r + 1) * per_round]
            loop_times.append(timed(lambda n, c=chunk: trainer.train_epoch(c, lambda *a: None), len(chunk)))
            bare_times.append(timed(bare, per_round))
    loop_step, bare_step = min(loop_times), min(bare_times)
    return {"loop_img_s": config.batch_size / loop_step, "bare_img_s": config.batch_size / bare_step,
            "overhead": loop_step / bare_step - 1.0, "device": trainer.device_name,
            "loop_rounds": [round(config.batch_size / t, 1) for t in loop_times],
            "bare_rounds": [round(config.batch_size / t, 1) for t in bare_times]}


def set_threads(count: int) -> None:
    """Intra-op threads of both frameworks (OpenMP/MKL read the variables when they start)."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CPU_NUM"):
        os.environ[name] = str(count)
    import torch

    torch.set_num_threads(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="resnet18_baseline")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads per framework (0: the framework's default); 1 is steadier on a busy machine")
    parser.add_argument("--frameworks", default="torch,paddle")
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu", "auto"])
    args = parser.parse_args()
    if args.threads:
        set_threads(args.threads)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, threads {args.threads or 'default'}, spec {args.spec}, batch 32, 96 px, "
          f"{args.steps} timed steps in {args.rounds} rounds after {args.warmup} warmup")
    print("| framework | device | loop img/s | bare img/s | loop overhead |")
    print("|---|---|---:|---:|---:|")
    for framework in args.frameworks.split(","):
        r = bench(framework, args.spec, args.steps, args.warmup, args.rounds, args.device)
        print(f"| {framework} | {r['device']} | {r['loop_img_s']:.1f} | {r['bare_img_s']:.1f} | "
              f"{100 * r['overhead']:+.1f}% |", flush=True)
        print(f"<!-- {framework} img/s per round: loop {r['loop_rounds']}, bare {r['bare_rounds']} -->", flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
