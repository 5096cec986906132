"""`instyle stylize ... --distributed ray`: the same batch on Ray Data, with the same outputs as a local run.

The driver (stylize_cli) finds the inputs, checks -o, skips existing outputs and proves the model exactly as a
local run does (instyle.jobs). This module ships the jobs to Ray Data as tasks — up to 4·--batch images, or one
video — and `map_batches` runs them on a fixed pool of actors, `StylizeWorker`: each builds one Stylizer in
its __init__ and, per task, runs the local per-file code (jobs.stylize_images / video_cli.stylize_one), which
writes every output itself (temp file + rename inside -o) and records the file's outcome. The actors return one
status row per file (its input index, ok, its warning/error lines); stylize() yields the jobs back in input
order as they arrive, and the CLI prints them and sets the exit code.

Cluster: `--ray-address` or RAY_ADDRESS joins a running cluster; otherwise a local one is started (one logical
CPU per worker, a small object store, no dashboard) and shut down at the end. Workers read inputs and write
outputs by path, so on several nodes INPUT and -o must be on storage every node mounts at the same path.

The model file travels through the object store: the driver ray.put()s its bytes once, every actor gets them
from its node's store and loads them from a private temporary file (see docs/distributed.md).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from instyle.errors import UsageError, require

# Images per Ray task, in units of --batch: big enough to fill a batch from a folder of equal-size frames, small
# enough that the actors share the work evenly and results stream back.
TASK_BATCHES = 4
# A local cluster's object store holds the model file and status rows only (images never enter it).
LOCAL_OBJECT_STORE_BYTES = 256 * 2 ** 20
# Ray Data hands whole blocks to an actor: enough blocks to share the work, few enough for the driver to track.
MAX_BLOCKS = 2048


class WorkerError(RuntimeError):
    """A Ray worker could not start (e.g. the Stylizer cannot be built on its node)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale-out (pip install 'instyle[ray]')")
    g.add_argument("--distributed", choices=("ray",), help="run the batch on Ray Data: a local cluster, or the "
                   "one named by --ray-address / RAY_ADDRESS")
    g.add_argument("--workers", type=int, metavar="N", help="Ray actors, one Stylizer each (default: the "
                   "cluster's GPUs / --gpus-per-worker, or its CPUs)")
    g.add_argument("--gpus-per-worker", type=float, metavar="F",
                   help="GPUs per actor (default: 1 when the cluster has GPUs, else 0)")
    g.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster (default: $RAY_ADDRESS, else start "
                   "a local one)")


def validate(args) -> None:
    given = [f for f, v in (("--workers", args.workers), ("--gpus-per-worker", args.gpus_per_worker),
                            ("--ray-address", args.ray_address)) if v is not None]
    if given and not args.distributed:
        raise UsageError(f"{given[0]} needs --distributed ray")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.gpus_per_worker is not None and not args.gpus_per_worker >= 0:
        raise UsageError(f"--gpus-per-worker must be >= 0, got {args.gpus_per_worker}")
    if args.distributed:
        require("ray", "--distributed ray")


def _connect(ray, address: str | None, workers: int | None) -> bool:
    """Join the cluster at `address` (or $RAY_ADDRESS); else start a local one. True when we started it."""
    import logging

    address = address or os.environ.get("RAY_ADDRESS")
    quiet = dict(logging_level=logging.WARNING, log_to_driver=True, configure_logging=True)
    if address:
        ray.init(address=address, **quiet)
        return False
    ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False,
             object_store_memory=LOCAL_OBJECT_STORE_BYTES, **quiet)
    return True


def _pool(ray, workers: int | None, gpus_per_worker: float | None) -> tuple[int, float]:
    """(actors, GPUs per actor) from the flags and what the cluster has."""
    have = ray.cluster_resources()
    gpus = gpus_per_worker if gpus_per_worker is not None else (1.0 if have.get("GPU", 0) >= 1 else 0.0)
    if workers is None:
        workers = int(have.get("GPU", 0) // gpus) if gpus else int(have.get("CPU", 1))
    return max(1, workers), gpus


def _tasks(jobs, batch: int) -> list[dict]:
    """Ray rows: one per task, {"jobs": JSON [[input index, src, dst], ...]}: one video, or up to
    TASK_BATCHES·batch images (in input order, so equal sizes next to each other share batches)."""
    from instyle.video import is_video

    tasks, images = [], []
    for i, job in enumerate(jobs):
        row = [i, str(job.src), str(job.dst)]
        if is_video(job.src):
            tasks.append([row])
        else:
            images.append(row)
    per_task = TASK_BATCHES * batch
    tasks += [images[i:i + per_task] for i in range(0, len(images), per_task)]
    return [{"jobs": json.dumps(t)} for t in tasks]


class StylizeWorker:
    """A Ray Data actor: one Stylizer, built once; each call stylizes one task's files and returns their status."""

    def __init__(self, model: list, suffix: str, stylizer_kwargs: dict, args: argparse.Namespace, cwd: str):
        import tempfile

        import ray

        import instyle

        self.args, self.error, self.cwd = args, None, cwd
        try:  # relative INPUT and -o mean what they mean on the driver (an actor is a process of its own)
            os.chdir(cwd)
            self.cwd = None
        except OSError:
            pass  # only an error if this node gets a relative path: see __call__
        try:
            with tempfile.TemporaryDirectory(prefix="instyle-model-") as folder:
                path = Path(folder, "model" + suffix)
                path.write_bytes(ray.get(model[0]))  # the ref travels inside a list so Ray does not resolve it early
                self.stylizer = instyle.load(str(path), **stylizer_kwargs)
        except Exception as e:  # raised from __call__, where Ray Data reports it to the driver as a task error
            self.error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from instyle import jobs, video_cli
        from instyle.video import is_video

        if self.error:
            raise WorkerError(f"instyle worker: cannot build the Stylizer: {self.error}")
        index, todo = [], []
        for task in batch["jobs"]:
            for i, src, dst in json.loads(task):
                index.append(i)
                todo.append(jobs.Job(Path(src), Path(dst)))
                if self.cwd and not (todo[-1].src.is_absolute() and todo[-1].dst.is_absolute()):
                    raise WorkerError(f"instyle worker: the driver's working folder {self.cwd} is not on this node; "
                                      f"name INPUT and -o by absolute paths on storage every node mounts")
        videos = [j for j in todo if is_video(j.src)]
        for job in videos:
            video_cli.stylize_one(self.stylizer, job, self.args, jobs.target_size)
        jobs.stylize_images(self.stylizer, [j for j in todo if not is_video(j.src)],
                            jobs.ImageOptions.from_args(self.args))
        return {"index": np.array(index, dtype=np.int64), "ok": np.array([j.ok for j in todo], dtype=bool),
                "lines": np.array([json.dumps(j.lines) for j in todo])}


def _worker_error(e: BaseException) -> WorkerError | None:
    """The WorkerError inside the exception Ray Data raised on the driver: Ray wraps it in its own types, and
    sometimes only the remote traceback's text, ending in `...WorkerError: MESSAGE`, survives."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, WorkerError):
            return e
        found = re.findall(r"WorkerError: (instyle worker: [^\n]*)", str(e))
        if found:
            return WorkerError(found[-1])
        seen.add(id(e))
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return None


def stylize(todo: list, *, model: Path, stylizer_kwargs: dict, args) -> Iterator:
    """Stylize the jobs `todo` on Ray Data; yields each Job, its `ok` and `lines` filled in, in input order.

    Raises WorkerError when the actors cannot start, MissingDependency without ray."""
    require("ray", "--distributed ray")
    import ray
    import ray.data

    started = _connect(ray, args.ray_address, args.workers)
    try:
        workers, gpus = _pool(ray, args.workers, args.gpus_per_worker)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = sys.stderr.isatty()  # Ray's own bars, like the local run's tqdm
        tasks = _tasks(todo, args.batch)
        worker_args = argparse.Namespace(**{k: v for k, v in vars(args).items() if not k.startswith("_")})
        ds = ray.data.from_items(tasks, override_num_blocks=min(len(tasks), MAX_BLOCKS)).map_batches(
            StylizeWorker, batch_size=1, batch_format="numpy", num_cpus=1, num_gpus=gpus,
            compute=ray.data.ActorPoolStrategy(size=workers),
            fn_constructor_kwargs=dict(model=[ray.put(Path(model).read_bytes())], suffix=Path(model).suffix,
                                       stylizer_kwargs=stylizer_kwargs, args=worker_args, cwd=os.getcwd()))
        arrived, next_index = {}, 0
        try:
            for row in ds.iter_rows():
                arrived[int(row["index"])] = row
                while next_index in arrived:
                    row, job = arrived.pop(next_index), todo[next_index]
                    job.ok, job.lines = bool(row["ok"]), json.loads(row["lines"])
                    next_index += 1
                    yield job
        except Exception as e:
            cause = _worker_error(e)
            if cause is None or cause is e:
                raise
            raise cause from None
        for job in todo[next_index:]:  # every task returns its rows; a missing one is a bug, not a file's fault
            raise AssertionError(f"no status came back for {job.src}")
    finally:
        if started:
            ray.shutdown()
