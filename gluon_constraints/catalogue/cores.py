"""Batches of small LAPACK problems spread over the processor's cores.

OpenBLAS threads each LAPACK call, and for the matrices of a convolution's spectrum (dozens to a
few hundred rows, hundreds to thousands of them) its threads cost more than they save: on two
cores a batch of 64 x 64 Cholesky factorisations runs in half the time on one BLAS thread, and in
a third with the batch split between two threads of one BLAS thread each.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, List, Optional, TypeVar

__all__ = ["across_cores", "cores"]

Result = TypeVar("Result")

#: Held while BLAS is limited: threadpoolctl's limit is process-wide, and two limits overlapping
#: in time would restore each other's setting, leaving one thread for good.
_lock = threading.Lock()
_controller: Optional[Any] = None
#: The BLAS limit in force (held with ``_lock``), or None.
_limit: Optional[Any] = None


def _new_lock_in_child() -> None:
    """A child forked while another thread held ``_lock`` (a DataLoader worker forked during a
    bound) would wait for it for ever, and keep BLAS on one thread: the child gets its own lock
    and BLAS's own thread count back."""
    global _lock, _limit
    _lock = threading.Lock()
    if _limit is not None:
        _limit.restore_original_limits()
        _limit = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


def cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def across_cores(work: Callable[[slice], Result], count: int) -> List[Result]:
    """``work`` on contiguous slices of ``range(count)``, one per core (at most ``count``), run
    in threads while numpy's BLAS runs on one thread; the results in the slices' order. With one
    slice, ``work`` runs in the calling thread, BLAS untouched.

    ``work`` must release the GIL for its heavy part (numpy's linear algebra does) and must not
    share writable memory between slices. Calls from several threads take turns.
    """
    workers = max(1, min(cores(), count))
    bounds = [count * i // workers for i in range(workers + 1)]
    parts = [slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]
    if workers == 1:
        return [work(parts[0])]
    global _limit
    with _lock:
        _limit = _one_blas_thread()
        try:
            with ThreadPoolExecutor(workers) as pool:
                return list(pool.map(work, parts))
        finally:
            _limit.restore_original_limits()
            _limit = None


def _one_blas_thread() -> Any:
    """The loaded BLAS libraries set to one thread (threadpoolctl's limit, undone by its
    ``restore_original_limits``; its scan of the loaded libraries is made once). Called with ``_lock``.
    numpy's OpenBLAS has one process-wide setting; an OpenMP-threaded BLAS (MXNet's own) is set
    for the calling thread only, and numpy never calls it."""
    global _controller
    from threadpoolctl import ThreadpoolController

    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")
