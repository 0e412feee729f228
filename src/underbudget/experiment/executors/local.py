"""The local executor: tasks side by side on N worker processes of this machine.

Workers are forked from a fork server, a fresh process that has imported torch and the task
kinds once (``spawn`` where there is no fork server): no worker inherits this process's
threads, CUDA state or locks, and none pays the imports again.
Each worker, before any work, sets its thread counts (``cores // N`` intra-op threads, one
inter-op thread, the same in ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``) and, when there are
GPUs, sees one of them through ``CUDA_VISIBLE_DEVICES``. A worker that dies (killed, out of
memory) fails its task; a fresh pool takes the rest.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from ..graph import Graph, Task
from .base import Dispatcher, Options, Outcome, died, execute_task


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The GPU ids this process sees (respecting its own ``CUDA_VISIBLE_DEVICES``)."""
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        return []
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [g.strip() for g in given.split(",") if g.strip()] if given else []
    return ids[:count] if len(ids) >= count else [str(i) for i in range(count)]


def set_threads(threads: int, interop: bool = True) -> None:
    """Use ``threads`` intra-op threads (and one inter-op thread) in this process."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    if interop:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set, or parallel work already ran in this process
            pass


def _start_worker(slots, threads: int, gpus: list[str]) -> None:
    index = slots.get()
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    set_threads(threads)


#: what the fork server imports once, so that no worker pays for it again
PRELOAD = ["torch", "underbudget.experiment.executors.base"]


def _context():
    """``forkserver`` (workers forked from one clean process that has imported torch and the
    task kinds) where there is one, else ``spawn``."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def _pool(workers: int, gpus: list[str]) -> ProcessPoolExecutor:
    ctx = _context()
    slots = ctx.Queue()
    for i in range(workers):
        slots.put(i)
    threads = max(1, available_cores() // workers)
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker,
                               initargs=(slots, threads, gpus))


def execute(graph: Graph, root: Path, options: Options) -> dict[str, Outcome]:
    """Run ``graph`` on ``executor.workers`` processes (default: one per core)."""
    workers = max(1, min(options.executor.workers or available_cores(), len(graph.tasks) or 1))
    dispatch = Dispatcher(graph, options, slots=workers)
    gpus = visible_gpus()
    pool = _pool(workers, gpus)
    running: dict[Future, Task] = {}
    try:
        while not dispatch.finished:
            for task in dispatch.take_ready(limit=workers - len(running)):
                running[pool.submit(execute_task, task, root, options)] = task
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            broken = False
            for future in finished:
                task = running.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    broken = True
                    outcome = died(root, task, "its worker process died (killed, or out of "
                                               "memory)")
                dispatch.finish(task, outcome)
            if broken:  # every task still on the broken pool is lost with it
                for future, task in list(running.items()):
                    running.pop(future)
                    dispatch.finish(task, died(root, task, "its worker process pool broke"))
                pool.shutdown(wait=False, cancel_futures=True)
                pool = _pool(workers, gpus)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return dispatch.results()
