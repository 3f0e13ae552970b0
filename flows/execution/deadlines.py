"""Deadlines for work in the flow's own process (``timeouts`` in params.yaml): a stage that stops making progress
fails the run, naming itself, instead of holding it forever.

A launched stage has its own deadlines: the whole launch (``timeouts.launch_seconds``, flows/execution/launcher.py) and
every
collective between its ranks (``timeouts.collective_seconds``, flows/execution/runtimes.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator

EXIT_HUNG = 124  # the process's exit status when a hung stage could not be stopped in Python (as timeout(1))


class StageTimeout(RuntimeError):
    """A stage in this process reported no progress within its deadline."""


def _raise_in(thread_id: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(StageTimeout))


@contextlib.contextmanager
def progress_deadline(what: str, seconds: float, grace: float) -> Iterator[Callable[[], None]]:
    """Work in this thread that calls the yielded ``beat`` at least every ``seconds`` (each step, each iteration).

    When a beat is late, StageTimeout is raised in this thread at its next Python instruction, so the run fails as
    it would on any error (its MLflow runs failed, nothing registered). Work stuck in native code (a C call that
    never returns) cannot be interrupted so: ``grace`` seconds later every thread's stack goes to stderr and the
    process exits with EXIT_HUNG."""
    target, stopped = threading.get_ident(), threading.Event()
    last = [time.monotonic()]
    message = f"{what}: no progress for {seconds:g} s (timeouts.progress_seconds); stopped"

    def beat() -> None:
        last[0] = time.monotonic()

    def watch() -> None:
        while not stopped.wait(min(1.0, seconds / 4)):
            if time.monotonic() - last[0] < seconds:
                continue
            _raise_in(target)
            if stopped.wait(grace):
                return
            sys.stderr.write(f"{message}, but it is stuck outside Python; every thread's stack:\n")
            faulthandler.dump_traceback(all_threads=True)
            sys.stderr.flush()
            os._exit(EXIT_HUNG)

    watcher = threading.Thread(target=watch, name=f"deadline {what}", daemon=True)
    watcher.start()
    try:
        yield beat
    except StageTimeout:
        raise StageTimeout(message) from None
    finally:
        stopped.set()
        watcher.join()
