"""Batches of LAPACK problems spread over the cores (gluon_constraints/catalogue/cores.py, used by
the certification of docs/certification.md): every slice once, in order, BLAS on one thread
while they run and as before afterwards, whatever happens."""

import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from gluon_constraints.catalogue import cores, spectrum


def blas_threads():
    """The thread counts of the BLAS libraries with one process-wide setting (numpy's OpenBLAS
    among them; an OpenMP-threaded one, as MXNet's own, has one per thread)."""
    return sorted((info["filepath"], info["num_threads"]) for info in threadpool_info()
                  if info["user_api"] == "blas" and info.get("threading_layer") == "pthreads")


@pytest.fixture
def three_cores(monkeypatch):
    monkeypatch.setattr(cores, "cores", lambda: 3)


@pytest.mark.parametrize("count", [1, 2, 3, 7, 40])
def test_the_slices_cover_the_range_once_in_order(three_cores, count):
    parts = cores.across_cores(lambda part: list(range(count))[part], count)
    assert len(parts) == min(3, count)
    assert sum(parts, []) == list(range(count))
    assert all(part for part in parts)


def test_blas_runs_on_one_thread_inside_and_as_before_after(three_cores):
    before = blas_threads()
    inside = cores.across_cores(lambda part: blas_threads(), 3)
    assert all(threads == [(path, 1) for path, _ in before] for threads in inside)
    assert blas_threads() == before


def test_an_error_in_one_slice_reaches_the_caller_and_restores_blas(three_cores):
    before = blas_threads()

    def work(part):
        if part.start > 0:
            raise ValueError(f"slice {part}")
        return part

    with pytest.raises(ValueError, match="slice"):
        cores.across_cores(work, 6)
    assert blas_threads() == before


def test_calls_from_several_threads_leave_blas_as_it_was(three_cores):
    # threadpoolctl's limit is process-wide: overlapping limits would restore each other's
    before = blas_threads()
    barrier = threading.Barrier(4)

    def call():
        barrier.wait()
        for _ in range(5):
            cores.across_cores(lambda part: np.linalg.cholesky(np.eye(8)[None].repeat(4, 0)), 4)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert blas_threads() == before


@pytest.mark.parametrize("available", [1, 2, 3, 16])
def test_the_certified_largest_eigenvalue_does_not_depend_on_the_cores(monkeypatch, available):
    # misranked matrices (a close second top in each) fall in every slice, and runs of tested
    # matrices are cut by the leaders: the result is exact either way
    monkeypatch.setattr(cores, "cores", lambda: available)
    rng = np.random.default_rng(11)
    vectors = np.linalg.qr(rng.standard_normal((30, 16, 16)) + 1j * rng.standard_normal((30, 16, 16)))[0]
    values = np.sort(rng.uniform(0.0, 1.0, (30, 16)), axis=1)
    values[:, -1] = 1.0 + rng.uniform(0.0, 1e-6, 30)
    values[:, -2] = values[:, -1] * (1 - rng.uniform(0.0, 1e-3, 30))
    gram = vectors @ (values[..., None] * np.conj(np.swapaxes(vectors, 1, 2)))
    exact = np.linalg.eigvalsh(gram)[:, -1].max()
    assert exact <= spectrum._largest_eigenvalue_bound(gram) <= exact * (1 + 2 * spectrum.CANDIDATE_MARGIN)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_child_forked_during_a_batch_gets_the_lock_and_blas_threads_back(three_cores):
    import os

    before = blas_threads()
    with cores._lock:  # as if another thread were inside across_cores when the fork came
        cores._limit = cores._one_blas_thread()
        try:
            pid = os.fork()
            if pid == 0:  # the child: exit 0 if BLAS is as before and a batch runs, within 30 s
                done = threading.Event()
                threading.Thread(target=lambda: (cores.across_cores(lambda part: part, 4), done.set()),
                                 daemon=True).start()
                os._exit(0 if done.wait(30) and blas_threads() == before else 1)
        finally:
            cores._limit.restore_original_limits()
            cores._limit = None
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert blas_threads() == before
