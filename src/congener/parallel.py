"""Worker processes that die with their parent.

`concurrent.futures.ProcessPoolExecutor` leaves its workers running when the parent is killed
(SIGKILL, out-of-memory killer, a closed terminal): they are re-parented to init, go on
training or block forever writing to a pipe nobody reads, and race with a rerun of the same
command. `worker_pool` gives each worker two guards, set up in its initializer:
- Linux: `prctl(PR_SET_PDEATHSIG, SIGKILL)`, so the kernel kills it the moment its parent dies;
- everywhere: a daemon thread that polls the parent's process id and exits when it changes.
On any exception in the parent (Ctrl-C included), pending work is cancelled and the workers are
terminated instead of waiting for their runs to finish.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """Worker initializer: exit as soon as the process `parent_pid` is gone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != parent_pid:  # the parent died before the guard was set
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="congener-parent-watch", daemon=True).start()


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A spawn-context process pool whose workers die with this process (see module doc)."""
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                               initializer=_die_with_parent, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        # the executor has no public way to stop running tasks: terminate its processes (taken
        # before shutdown, which forgets them)
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            with contextlib.suppress(Exception):
                process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
