"""Run the equivalence check of many specs on every core, with progress on a terminal.

One spec is one job: its twins are built once and serve all its cases. The
workers (spawned, so each imports the frameworks afresh) can be started before
the caller imports anything heavy (`start_workers`). This process checks the
memory bound of every job, in queue order, before it takes a job itself; a
worker takes each job as soon as its bound is checked. Jobs go largest first so
the long ones do not finish last alone. Each worker runs torch, paddle
and numpy on one thread: on a small machine one process per core beats
threads, and two frameworks' thread pools in one process fight for the cores.
A single job runs in this process: starting a worker would cost more than it
saves.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any

from crossattn.errors import CrossattnError

#: one thread per library in a worker; set before the worker imports any of them
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CPU_NUM",
                    "FLAGS_paddle_num_threads")
#: a run shorter than this shows no progress display at all
PROGRESS_AFTER_S = 2.0


@dataclasses.dataclass(frozen=True)
class CheckJob:
    spec: Any  # crossattn.spec.Spec, or a crossattn.model_pair.ModelPair
    directions: tuple[str, ...]
    modes: tuple[str, ...]
    tol: Any  # crossattn.tolerances.Tolerance
    seed: int
    dtype: str
    probes: tuple[str, ...] | None = None  # None: crossattn.check.default_probes of the input
    bounded: bool = False  # its memory bound was already checked (by the parent of a pool)

    @property
    def probe_names(self) -> tuple[str, ...]:
        if self.probes is not None:
            return self.probes
        from crossattn.check import default_probes, users_pair

        return default_probes(self.spec.input_shape, users_pair(self.spec))

    @property
    def cases(self) -> int:
        return len(self.directions) * len(self.modes) + (len(self.probe_names) if "eval" in self.modes else 0)

    @property
    def name(self) -> str:
        return self.spec.name

    def portable(self) -> "CheckJob | None":
        """This job as it can travel to a worker process (a Spec pickles; a user's factories may not)."""
        spec = self.spec
        if hasattr(spec, "builders"):  # a ModelPair
            if spec.spec is None or spec.weights is not None:  # its factories, or a checkpoint's state, stay here
                return None
            spec = dataclasses.replace(spec.spec, input_shape=spec.input_shape)
        return dataclasses.replace(self, spec=spec)

    @property
    def weight(self) -> int:
        """Rough cost for ordering: models before blocks, deeper models first."""
        spec = self.spec.spec if hasattr(self.spec, "builders") else self.spec  # a ModelPair's spec, or None
        if spec is None:
            return 0
        options = getattr(spec.options, "kwargs", lambda: {})()
        depth = options.get("depth", 0) if isinstance(options, dict) else 0
        is_model = spec.kind == "model"
        return (2 if is_model else 0) * 1000 + (depth if isinstance(depth, int) else 0)


@dataclasses.dataclass
class JobResult:
    name: str
    cases: list[Any]  # CheckCase
    seconds: float


def run_job(job: CheckJob) -> JobResult:
    """Check one spec (in a worker or in this process): its memory bound first, then its cases."""
    from crossattn.bounds import require_pair_fits
    from crossattn.check import as_pair, check_spec

    started = time.perf_counter()
    if not job.bounded:
        require_pair_fits(as_pair(job.spec), "check")  # before anything is built
    cases = check_spec(job.spec, job.directions, job.modes, job.tol, job.seed, job.dtype, probes=job.probes)
    return JobResult(job.name, cases, time.perf_counter() - started)


def _single_threaded() -> None:
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"


def _worker_main(conn: Any) -> None:
    """A worker: import everything, say it is ready, then check each job it is sent until told to stop."""
    import warnings

    _single_threaded()
    warnings.filterwarnings("ignore", message="No ccache found")
    from crossattn.frameworks import available

    for framework in ("torch", "paddle"):
        available(framework)  # import it now, before asking for work
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    import crossattn.check  # noqa: F401

    conn.send("ready")
    while True:
        job = conn.recv()
        if job is None:  # told to stop: results are sent, nothing is left to tear down (torch's and paddle's
            conn.close()  # module teardown takes about 0.8 s, which the pool would wait for)
            os._exit(0)
        conn.send(_run_reporting(job))


def _run_reporting(job: CheckJob) -> tuple[str, Any]:
    """Results travel back as data; exceptions as text (a custom exception may not unpickle)."""
    try:
        return "ok", run_job(job)
    except CrossattnError as exc:
        return "user", str(exc)
    except Exception:  # noqa: BLE001 - reported in the parent with the worker's traceback
        return "crash", traceback.format_exc()


def default_workers() -> int:
    """One worker per core the process may use."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:
        return max(os.cpu_count() or 1, 1)


class Workers:
    """Worker processes started before the caller imports the frameworks, so that their imports (about 3 s
    each) run beside the caller's own instead of after them. `run_checks` takes them over."""

    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.started: list[tuple[Any, Any]] = []  # (process, pipe)
        for _ in range(count):
            parent, child = context.Pipe()
            process = context.Process(target=_worker_main, args=(child,), daemon=True)
            process.start()
            child.close()
            self.started.append((process, parent))

    def take(self, count: int) -> list[tuple[Any, Any]]:
        """Up to `count` of the workers, for a pool; the rest are stopped."""
        taken, rest = self.started[:count], self.started[count:]
        self.started = []
        for process, parent in rest:
            _stop(process, parent)
        return taken

    def close(self) -> None:
        """Stop every worker not taken (a run that ended before its jobs, a user error)."""
        self.take(0)


def _stop(process: Any, parent: Any) -> None:
    if process.is_alive():  # interrupted, stuck, or never used: SIGKILL (paddle reports a SIGTERM at length)
        process.kill()
    process.join(timeout=5)
    parent.close()


def start_workers(workers: int = 0) -> Workers:
    """The spawned workers a pool of `workers` (0: one per core) will use, started now."""
    return Workers(max((workers or default_workers()) - 1, 0))


def run_checks(jobs: Sequence[CheckJob], workers: int = 0, show_progress: bool | None = None,
               started: Workers | None = None) -> list[JobResult]:
    """Every job's result, in the order of `jobs`.

    `workers` 0 means one per core; `show_progress` None means: on a terminal
    (stderr). User errors raised in a worker are raised here as CrossattnError.
    `started`: workers already started (`start_workers`), used first.
    """
    jobs = list(jobs)
    workers = min(workers or default_workers(), len(jobs))
    if any(job.portable() is None for job in jobs):
        workers = 1  # a user's own pair is checked here
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    early = started.take(workers - 1) if started is not None else []
    progress = _Progress(sum(j.cases for j in jobs), show_progress)
    try:
        if workers <= 1:
            saved = _own_threads(1)
            try:
                results = []
                for job in jobs:
                    progress.running([job.name])
                    results.append(run_job(job))
                    progress.done(job.cases)
            finally:
                _restore_threads(saved)
            return results
        return _Pool(jobs, workers, progress, early).run()
    finally:
        progress.close()


class _Pool:
    """This process and `workers - 1` spawned ones take jobs, largest first, from one queue.

    This process first checks every job's memory bound, in queue order; a
    worker that has imported the frameworks takes a job as soon as that job's
    bound is checked, and this process joins in when all are. A spec too large
    is refused before it is built and before any result is reported (a job a
    worker already runs is stopped). A worker still starting when the queue is
    empty is stopped, so a short run never waits for one.
    """

    def __init__(self, jobs: list[CheckJob], workers: int, progress: "_Progress",
                 started: list[tuple[Any, Any]] | None = None) -> None:
        self.jobs, self.workers, self.progress = jobs, workers, progress
        self.queue = sorted(range(len(jobs)), key=lambda i: -jobs[i].weight)
        self.results: list[JobResult | None] = [None] * len(jobs)
        self.running: dict[int, str] = {}
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.early = list(started or [])
        self.bounded = [threading.Event() for _ in jobs]  # set when the job's bound is checked (or on an error)

    def take(self, who: int) -> int | None:
        with self.lock:
            if self.error is not None or not self.queue:
                self.running.pop(who, None)
                return None
            index = self.queue.pop(0)
            self.running[who] = self.jobs[index].name
        self.progress.running(list(self.running.values()))
        return index

    def finish(self, who: int, index: int, status: str, value: Any) -> None:
        with self.lock:
            self.running.pop(who, None)
            if status == "ok":
                self.results[index] = value
            elif self.error is None:
                name = self.jobs[index].name
                self.error = (CrossattnError(value) if status == "user" else
                              RuntimeError(f"checking spec {name} failed in a worker:\n{value}"))
        self.progress.done(self.jobs[index].cases)

    def serve(self, who: int, process: Any, conn: Any, ready: threading.Event) -> None:
        index = None
        try:
            conn.recv()  # "ready"
            ready.set()
            while (index := self.take(who)) is not None:
                self.bounded[index].wait()
                if self.error is not None:
                    break
                conn.send(self.jobs[index].portable())
                self.finish(who, index, *conn.recv())
                index = None
            conn.send(None)
        except (EOFError, OSError):  # the worker died or was stopped: its job goes back to the queue
            with self.lock:
                self.running.pop(who, None)
                if index is not None:
                    self.queue.insert(0, index)

    def bound_all(self) -> None:
        """Every job's memory bound, here, in queue order, each job released to the workers once checked;
        only this process pays the first meta-device forward (it imports torch._dynamo, about 1 s)."""
        from crossattn.bounds import require_pair_fits
        from crossattn.check import as_pair

        try:
            for index in list(self.queue):
                require_pair_fits(as_pair(self.jobs[index].spec), "check")
                self.jobs[index] = dataclasses.replace(self.jobs[index], bounded=True)
                self.bounded[index].set()
                self.progress.tick()
        except BaseException as exc:
            with self.lock:
                self.error = self.error or exc
            raise
        finally:
            for event in self.bounded:  # on an error, waiting threads wake to see it
                event.set()

    def run(self) -> list[JobResult]:
        context = multiprocessing.get_context("spawn")
        saved_threads = _own_threads(1)
        started = self.early  # (process, pipe) of every worker, for the cleanup
        workers = []
        try:
            for _ in range(len(started) + 1, self.workers):
                parent, child = context.Pipe()
                process = context.Process(target=_worker_main, args=(child,), daemon=True)
                process.start()
                child.close()
                started.append((process, parent))
            for who, (process, parent) in enumerate(started, start=1):
                ready = threading.Event()
                thread = threading.Thread(target=self.serve, args=(who, process, parent, ready), daemon=True)
                thread.start()
                workers.append((process, parent, thread, ready))
            self.bound_all()  # a worker takes each job once its bound is checked
            while (index := self.take(0)) is not None:
                self.finish(0, index, *_run_reporting(self.jobs[index]))
            for process, parent, thread, ready in workers:
                if not ready.is_set():  # never took a job: no reason to wait for its imports
                    process.kill()
            for process, parent, thread, ready in workers:
                while thread.is_alive():
                    thread.join(timeout=0.25)
                    self.progress.tick()
            # a worker that died with a job handed it back: this process finishes it
            while (index := self.take(0)) is not None:
                self.finish(0, index, *_run_reporting(self.jobs[index]))
            for process, parent, thread, ready in workers:
                process.join(timeout=10)  # told to stop: let it exit by itself
        finally:
            for process, parent in started:
                _stop(process, parent)
            _restore_threads(saved_threads)
        if self.error is not None:
            raise self.error
        return [r for r in self.results if r is not None]


def _own_threads(count: int | None) -> tuple[int, int] | None:
    """Set torch's intra-op and numpy's BLAS threads in this process; returns the previous counts.

    Checks move small tensors through many short kernels: on two cores shared
    with the other worker (and other users), every parallel region waits for a
    second core, which costs far more than it gains (an SE-ResNet-152 forward on
    64 pixels: 0.14 s on one thread, 2-5 s on two on a loaded machine).
    """
    from crossattn.frameworks import available

    if count is None:
        return None
    previous_torch = None
    if available("torch"):
        torch = sys.modules["torch"]
        previous_torch = torch.get_num_threads()
        torch.set_num_threads(count)
    previous_blas = _blas_threads(count)
    return previous_torch, previous_blas


def _restore_threads(previous: tuple[int | None, int | None] | None) -> None:
    if previous is None:
        return
    if previous[0] is not None:
        sys.modules["torch"].set_num_threads(previous[0])
    if previous[1] is not None:
        _blas_threads(previous[1])


def _blas_threads(count: int) -> int | None:
    """numpy's bundled OpenBLAS thread count, set through its C API; None where it cannot be found."""
    import ctypes
    import glob

    import numpy

    libs = glob.glob(os.path.join(os.path.dirname(numpy.__file__) + ".libs", "libscipy_openblas*.so"))
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
            get, set_ = lib.scipy_openblas_get_num_threads64_, lib.scipy_openblas_set_num_threads64_
        except (OSError, AttributeError):
            continue
        set_.argtypes = [ctypes.c_int]
        previous = int(get())
        set_(count)
        return previous
    return None


class _Progress:
    """rich progress on stderr: cases done of all, the specs running, elapsed and ETA; silent when off."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.started = time.perf_counter()
        self.completed = 0
        self.names: list[str] = []
        self._bar = None
        self._task = None

    def _ensure(self) -> None:
        if not self.enabled or self._bar is not None or time.perf_counter() - self.started < PROGRESS_AFTER_S:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self._bar = Progress(TextColumn("check"), BarColumn(), MofNCompleteColumn(), TextColumn("cases"),
                             TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                             TextColumn("{task.description}"), console=Console(stderr=True), transient=True)
        self._bar.start()
        self._task = self._bar.add_task(self._description(), total=self.total, completed=self.completed)

    def _description(self) -> str:
        return ", ".join(self.names)

    def running(self, names: list[str]) -> None:
        self.names = names
        self.tick()

    def tick(self) -> None:
        self._ensure()
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, description=self._description())

    def done(self, cases: int) -> None:
        self.completed += cases
        self.tick()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
