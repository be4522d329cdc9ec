"""Run a list of jobs (one training run each): in this process, or in worker processes that die with it."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any

import torch

__all__ = ["quiet_lightning", "run_jobs"]

log = logging.getLogger(__name__)


def quiet_lightning() -> None:
    """Silence Lightning's per-run chatter (warnings, INFO lines): many short runs would drown the log."""
    warnings.filterwarnings("ignore", module=r"pytorch_lightning|lightning_fabric|lightning\.|torch\.utils\.data")
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _init_worker(threads: int, parent: int) -> None:
    """A worker process: ``threads`` torch threads, quiet Lightning, and (Linux) it dies with its parent."""
    torch.set_num_threads(threads)
    quiet_lightning()
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        # PR_SET_PDEATHSIG: a killed study leaves no orphan runs competing with its restart (or writing a result of
        # old code into a folder restarted since). SIGKILL, not SIGTERM: Lightning's signal connector catches
        # SIGTERM during fit and lets the run go on (seen: orphans still training 15 min after their study died).
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
        except (OSError, AttributeError):
            log.debug("prctl(PR_SET_PDEATHSIG) unavailable: workers may outlive a killed study")
        if os.getppid() != parent:  # the parent died while this worker was starting
            os._exit(1)


def run_jobs(jobs: Sequence[tuple], run: Callable[..., dict[str, Any]], *, processes: int = 1,
             threads: int | None = None,
             on_done: Callable[[dict[str, Any]], None] | None = None, fail_fast: bool = False,
             describe: Callable[[tuple], str] = lambda job: "/".join(map(str, job[:2]))) -> list[str]:
    """``run(*job)`` for every job; returns the jobs that failed (``describe(job)``), each logged with its traceback.

    ``processes <= 1``: one after the other in this process (``threads`` torch threads; ``None``: as it is).
    Otherwise a pool of ``processes`` spawned workers with ``threads`` threads each (``None``: 1); ``run`` and
    the jobs must then be picklable (module-level functions, plain values). Ctrl-C (or any ``BaseException``)
    stops the pool at once instead of finishing the queued jobs. ``fail_fast``: re-raise the first failure
    instead of going on. ``on_done(result)`` is called in this process after each finished job.
    """
    failed: list[str] = []

    def failure(job: tuple) -> None:
        if fail_fast:
            raise
        log.exception("%s failed", describe(job))
        failed.append(describe(job))

    if processes <= 1:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads or previous)
        try:
            for job in jobs:
                try:
                    result = run(*job)
                except Exception:
                    failure(job)
                    continue
                if on_done is not None:
                    on_done(result)
        finally:
            torch.set_num_threads(previous)
        return failed
    context = get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=processes, mp_context=context, initializer=_init_worker,
                               initargs=(threads or 1, os.getpid()))
    try:
        futures = {pool.submit(run, *job): job for job in jobs}
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception:
                failure(futures[future])
                continue
            if on_done is not None:
                on_done(result)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for child in context.active_children():
            child.terminate()
        raise
    pool.shutdown()
    return failed
