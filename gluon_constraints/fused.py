"""The fused one-pass projection kernel, compiled on first use and loaded into MXNet.

``kernels/project_rows.cc`` holds two custom CPU operators written against the ``lib_api.h`` the
mxnet wheel ships. ``gc_project_rows``: per row slice it sums the squares and rescales the row
while it is in cache, and leaves feasible rows unwritten, so a projection costs about one pass
over the weight instead of the five or six passes of stock operators.
``gc_sgd_mom_project_rows``: MXNet's SGD-with-momentum update with the projection fused in, so
for that optimizer enforcement adds no pass at all. It is built with the system's C++ compiler the first
time it is needed (about 7 seconds), cached under ``~/.cache/gluon_constraints`` (or
``$GLUON_CONSTRAINTS_CACHE``), and loaded with ``mx.library.load``. Without a compiler, or with
``GLUON_CONSTRAINTS_FUSED=0``, enforcement uses stock operators: same results up to rounding.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

import mxnet
from mxnet import ndarray

from .constraints import Constraint, MaxNorm, MinMaxNorm, NonNeg, UnitNorm

__all__ = ["kernel", "sgd_kernel", "row_parameters", "library_path"]

_SOURCE = Path(__file__).with_name("kernels") / "project_rows.cc"
_EXPORTS = _SOURCE.with_name("exports.map")
# -march=native: the library is built on, and cached for, this machine's processor (its
# features are part of the cache key).
_FLAGS = ["-shared", "-fPIC", "-std=c++17", "-O3", "-march=native", "-fopenmp", "-Wl,-Bsymbolic",
          f"-Wl,--version-script={_EXPORTS}"]
_OP_NAME = "gc_project_rows"
_SGD_OP_NAME = "gc_sgd_mom_project_rows"
_lock = threading.Lock()
_loaded: Optional[Callable[..., Any]] = None
_tried = False


def row_parameters(constraint: Constraint) -> Optional[Tuple[str, float, float, float]]:
    """``(mode, lo, hi, rate)`` of the kernel for a built-in constraint, None for others.

    Subclasses return None: they may compute something else.
    """
    kind = type(constraint)
    if kind is MaxNorm:
        return ("norm", 0.0, constraint.max_value, 1.0)
    if kind is MinMaxNorm:
        return ("norm", constraint.min_value, constraint.max_value, constraint.rate)
    if kind is UnitNorm:
        return ("norm", 1.0, 1.0, 1.0)
    if kind is NonNeg:
        return ("nonneg", 0.0, 0.0, 1.0)
    return None


def kernel() -> Optional[Callable[..., Any]]:
    """The loaded operator (``ndarray.gc_project_rows``), or None where it cannot be had.

    It is never loaded inside a parameter-server process (mxnet is still importing there) or
    when ``GLUON_CONSTRAINTS_FUSED=0``.
    """
    global _loaded, _tried
    if _loaded is not None or _tried:
        return _loaded
    if os.environ.get("GLUON_CONSTRAINTS_FUSED", "1") == "0" or "mxnet.gluon" not in sys.modules:
        return None
    with _lock:
        if not _tried:
            _tried = True
            _loaded = _load()
    return _loaded


def sgd_kernel() -> Optional[Callable[..., Any]]:
    """The fused SGD-momentum update and projection (``ndarray.gc_sgd_mom_project_rows``)."""
    return getattr(ndarray, _SGD_OP_NAME) if kernel() is not None else None


def library_path() -> Path:
    """Where the compiled library for this source and this mxnet lives."""
    key = _SOURCE.read_bytes() + _EXPORTS.read_bytes() + " ".join(_FLAGS[:-1]).encode()
    digest = hashlib.sha256(key + mxnet.__version__.encode() + _processor_features()).hexdigest()[:16]
    root = Path(os.environ.get("GLUON_CONSTRAINTS_CACHE", Path.home() / ".cache" / "gluon_constraints"))
    return root / digest / "libgc_project_rows.so"


def _processor_features() -> bytes:
    """The processor's feature flags (what -march=native compiles for)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine().encode()
    flags = next((line for line in cpuinfo.splitlines() if line.startswith(("flags", "Features"))), "")
    return (platform.machine() + flags).encode()


def _load() -> Optional[Callable[..., Any]]:
    from mxnet import library  # a full mxnet import is complete on this process

    path = library_path()
    if not path.exists() and not _build(path):
        return None
    try:
        library.load(str(path), False)
    except Exception as error:  # noqa: BLE001 - any failure means: use stock operators
        warnings.warn(f"gluon-constraints could not load its fused kernel ({error}); using stock "
                      f"operators.", RuntimeWarning, stacklevel=3)
        return None
    return getattr(ndarray, _OP_NAME)


def _build(path: Path) -> bool:
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        return False
    mxnet_dir = Path(mxnet.__file__).parent
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        built = Path(scratch) / path.name
        command = [compiler, *_FLAGS, str(_SOURCE), str(mxnet_dir / "src" / "lib_api.cc"),
                   "-I", str(mxnet_dir / "include"), "-o", str(built)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            warnings.warn(f"gluon-constraints could not build its fused kernel; using stock "
                          f"operators. {compiler} said:\n{result.stderr[-2000:]}",
                          RuntimeWarning, stacklevel=4)
            return False
        os.replace(built, path)  # atomic: concurrent builders leave one complete file
    return True
