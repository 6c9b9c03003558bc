"""The fused kernels' shared library: compiled on first use, cached, verified, loaded.

``project_rows.cc`` holds two CPU kernels: ``gc_project_rows`` (a one-pass projection of
per-unit slices) and ``gc_update_project_rows`` (MXNet's SGD-momentum, NAG-momentum, Adam or
RMSProp update with that projection fused in), called with the typed structs of
:mod:`.boundary`. :class:`Kernel` queues them on MXNet's engine through
its public C API (``MXEnginePushSyncND``), like an operator that reads and writes exactly its
arrays: MXNet gives every operator loaded from a library a temporary-space and a random-number
resource that all CPU operators share, so each call would also wait for the backward pass still
queued, and a multi-context step would lose the overlap of its updates with that pass.
The third, ``gc_touched_rows`` (a lazy update of the rows a row-sparse gradient has, and their
projection), is queued the same way, after a small library operator, ``gc_row_indices``
(registered with ``mxnet.library.load`` on first use), has copied the row indices into a dense
array: MXNet hands an operator a row-sparse array's indices, which its C API hands over only by
waiting for the array, and that operator holds the shared resources for a copy only.
A wheel carries the library prebuilt for three x86-64 levels (:mod:`.sources`); the widest
level the processor supports is loaded, after its SHA-256 is checked against the wheel's
manifest. Elsewhere (a source install, another architecture, edited sources) the library is
built with the system's C++ compiler the first time it is needed (about 10 seconds) for this
processor (``-march=native``), cached under ``~/.cache/gluon_constraints`` (or
``$GLUON_CONSTRAINTS_CACHE``), and loaded with ``ctypes``.

The cache never hands back a damaged file: each build is stored under the name of its own
SHA-256 (``lib-<sha256>.so``, written to a temporary name and renamed, never rewritten), a small
``current`` file names it, and the file is hashed again before it is loaded (a truncated library
would kill the process with a bus error inside ``dlopen``). A file that fails the check is built
again. Any failure to build, cache, verify or load (no compiler, a read-only or blocked cache
directory, a compiler error) gives one :class:`~gluon_constraints.FusedKernelWarning` per process
and the stock operators, which compute the same projections. ``GLUON_CONSTRAINTS_FUSED=0`` (or
``false``, ``no``, ``off``) chooses the stock operators without a warning.

A build logs one line when it starts and one with its duration (logger
``gluon_constraints.kernels``, level WARNING so it shows without any logging set-up; silence it
with ``logging.getLogger("gluon_constraints").setLevel(logging.ERROR)``).
``python -m gluon_constraints build-kernel`` builds ahead of time, ``... info`` reports
:func:`status`.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple, Union

import mxnet

from .. import _mxnet_compat as compat
from ..errors import FusedKernelWarning, KernelCacheError, KernelCallError
from . import sources
from .boundary import RULES, Rates, UnitGroup, UpdateRule

__all__ = ["Kernel", "PreparedCall", "kernel", "loaded", "fused_chosen", "cache_directory", "prepared_library",
           "prebuilt_library", "status", "KernelStatus", "build_command"]

_POINTER = "current"
# MXNet's C API functions the library calls, in gc_bind's order.
_MXNET_FUNCTIONS = ("MXEnginePushSyncND", "MXNDArrayToDLPack", "MXNDArrayDetach", "MXNDArrayFree",
                    "MXNDArrayGetContext", "MXGetLastError")
_MESSAGE_SIZE = 1024
_log = logging.getLogger("gluon_constraints.kernels")
_lock = threading.Lock()
_OPERATOR = "gc_row_indices"
_registered: Optional[Path] = None  # the library whose gc_row_indices MXNet has registered
_loaded: Optional["Kernel"] = None
_tried = False
_unavailable = ""  # why the kernel could not be had in this process, once tried


class KernelStatus(NamedTuple):
    """Which path projections take in this process, and why.

    ``path`` is ``"fused"`` (the kernel is loaded, or a verified library is prebuilt or cached
    and loads on first use) or ``"stock"``; ``reason`` says why, ``library`` is the library that
    loads if there is one, ``compiler`` the C++ compiler a build would use (None if there is
    none), ``prebuilt`` the x86-64 level of the wheel's library in use (None: none is).
    """

    path: str
    reason: str
    cache: Optional[Path]
    library: Optional[Path]
    compiler: Optional[str]
    prebuilt: Optional[str] = None


class Kernel:
    """The loaded library's two calls, each queued on MXNet's engine without waiting.

    Both compute in place on float32 arrays of CPU contexts (several contexts may be mixed),
    each weight described by a :class:`~.boundary.UnitGroup` (see :mod:`.boundary`). A malformed
    call raises ``KernelCallError`` (an ``MXNetError``) when queued and queues nothing; an array that cannot be read in
    place when the call runs (MKL-DNN's blocked layout) fails it there, and MXNet raises that at
    the next wait on its arrays.
    """

    def __init__(self, library: ctypes.CDLL, path: Path) -> None:
        self.path = path
        arrays, text = ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p
        self._project = library.gc_project
        self._project.argtypes = [ctypes.POINTER(UnitGroup), ctypes.c_int, ctypes.c_int, arrays,
                                  ctypes.c_int, text, ctypes.c_int]
        self._update = library.gc_update
        self._update.argtypes = [ctypes.POINTER(UpdateRule), ctypes.POINTER(UnitGroup), ctypes.POINTER(Rates),
                                 ctypes.c_int, ctypes.c_int, arrays, ctypes.c_int, text, ctypes.c_int]
        self._touched = library.gc_touched
        self._touched.argtypes = [ctypes.POINTER(UpdateRule), ctypes.POINTER(UnitGroup), ctypes.POINTER(Rates),
                                  ctypes.c_int, arrays, ctypes.c_int, text, ctypes.c_int]
        self._layout = library.gc_layout
        self._layout.argtypes, self._layout.restype = [text, text], ctypes.c_int64

    def projection(self, weights: Sequence[Any], groups: Sequence[UnitGroup],
                   stats: Sequence[Any] = ()) -> "PreparedCall":
        """``gc_project_rows`` on ``weights``, one group each (with ``stats``: one float32 array
        of 3 per weight, receiving its statistics), prepared to be queued any number of times."""
        arrays = [*weights, *stats]
        packed = (UnitGroup * len(groups))(*groups)
        return PreparedCall(self._project, (packed, len(groups), int(bool(stats)), _handles(arrays),
                                            len(arrays)), arrays)

    def update(self, rule: UpdateRule, groups: Sequence[UnitGroup], rates: Sequence[Rates],
               arrays: Sequence[Any], stats: Sequence[Any] = ()) -> None:
        """Queue ``gc_update_project_rows``: ``arrays`` per weight ``(w, grad, states...)``, each
        weight with its group and rates."""
        listed = [*arrays, *stats]
        count = len(groups)
        _queue(self._update, ctypes.byref(rule), (UnitGroup * count)(*groups), (Rates * count)(*rates),
               count, int(bool(stats)), _handles(listed), len(listed))

    def touched_rows(self, rule: UpdateRule, group: UnitGroup, rates: Rates, weight: Any, rows: Any, indices: Any,
                     states: Sequence[Any] = (), stats: Optional[Any] = None) -> None:
        """Queue ``gc_touched_rows``: the rows that row-sparse ``rows`` has (its row indices) of
        ``weight`` and ``states`` updated in place by ``rule`` (a lazy rule, with ``rows`` the
        gradient, or ``"none"``), then projected as ``group`` (rows) says; ``stats`` (a float32
        array of 3, or None) receives the touched rows' statistics.

        ``indices`` is a dense int64 array on ``weight``'s context with room for the row count
        and the indices (``weight.shape[0] + 1`` entries always do), which ``gc_row_indices``
        fills first. ``weight`` stores every row (dense, or row-sparse with every row), or, with
        no update, it may be ``rows`` itself: then its stored rows are projected.

        Raises
        ------
        KernelCallError
            If the library refuses the call (no weight is written then), or MXNet cannot
            register ``gc_row_indices`` from this library.
        """
        self._operator()(rows, capacity=str(indices.size), out=indices)
        update = [rows] if rule.rule != RULES["none"] else []
        arrays = [weight, indices, *update, *states, *([stats] if stats is not None else [])]
        _queue(self._touched, ctypes.byref(rule), ctypes.byref(group), ctypes.byref(rates), int(stats is not None),
               _handles(arrays), len(arrays))

    def _operator(self) -> Any:
        """``gc_row_indices`` as an ``mxnet.ndarray`` function, registered from this library on
        first use (once per process: MXNet keeps one operator of a name)."""
        global _registered
        with _lock:
            if _registered is None:
                from mxnet import library as mxnet_library
                try:
                    mxnet_library.load(str(self.path), verbose=False)
                except mxnet.base.MXNetError as error:
                    raise KernelCallError(f"MXNet could not register {_OPERATOR} from {self.path}: {error}") from error
                _registered = self.path
        return getattr(mxnet.ndarray, _OPERATOR)

    def layout(self, structure: str, field: Optional[str] = None) -> int:
        """The library's size of ``structure``, or with ``field`` its offset (-1: unknown name)."""
        return self._layout(structure.encode(), None if field is None else field.encode())


class PreparedCall(NamedTuple):
    """A kernel call with its arguments converted for C once (:meth:`Kernel.projection`).

    It holds its arrays, so their handles stay valid while it lives; each :meth:`queue` queues
    the call on them as they are then.
    """

    function: Any
    arguments: Tuple[Any, ...]
    arrays: List[Any]

    def queue(self) -> None:
        """Queue the call (``KernelCallError`` if the library refuses it; nothing is queued then)."""
        _queue(self.function, *self.arguments)


def _queue(function: Any, *arguments: Any) -> None:
    """Call one of the library's queuing functions; raise its message if it refused the call."""
    message = ctypes.create_string_buffer(_MESSAGE_SIZE)
    if function(*arguments, message, _MESSAGE_SIZE) != 0:
        raise KernelCallError(message.value.decode())


def _handles(arrays: Sequence[Any]) -> Any:
    """The arrays' NDArray handles, as a C array."""
    return (ctypes.c_void_p * len(arrays))(*[a.handle for a in arrays])


def kernel() -> Optional[Kernel]:
    """The loaded library's :class:`Kernel`, or None where it cannot be had.

    Decided once per process. It is never loaded inside a parameter-server process (mxnet is
    still importing there) or when ``GLUON_CONSTRAINTS_FUSED`` says no (:func:`fused_chosen`).
    """
    global _loaded, _tried
    if _loaded is not None or _tried:
        return _loaded
    if not fused_chosen() or "mxnet.gluon" not in sys.modules:
        return None
    with _lock:
        if not _tried:
            loaded = _load()
            if isinstance(loaded, str):
                global _unavailable
                _unavailable = loaded
                warnings.warn(f"gluon-constraints is using stock MXNet operators (same results, "
                              f"slower) because its fused kernel is unavailable: {loaded}",
                              FusedKernelWarning, stacklevel=3)
            else:
                _loaded = loaded
            _tried = True
    return _loaded


_CHOICES = {**dict.fromkeys(("", "1", "true", "yes", "on"), True),
            **dict.fromkeys(("0", "false", "no", "off"), False)}
_misread: set = set()  # GLUON_CONSTRAINTS_FUSED values warned about


def fused_chosen() -> bool:
    """Whether ``GLUON_CONSTRAINTS_FUSED`` lets the fused kernel be used: unset or 1, true,
    yes, on (any case) say yes; 0, false, no, off say no (the stock operators). Another value
    warns once with :class:`~gluon_constraints.FusedKernelWarning` and counts as yes."""
    value = os.environ.get("GLUON_CONSTRAINTS_FUSED", "")
    choice = _CHOICES.get(value.strip().lower())
    if choice is None:
        if value not in _misread:
            _misread.add(value)
            warnings.warn(f"GLUON_CONSTRAINTS_FUSED={value!r} is not understood: use 1, true, yes or "
                          f"on for the fused kernel (the default), 0, false, no or off for the stock "
                          f"operators. The fused kernel is used.", FusedKernelWarning, stacklevel=3)
        return True
    return choice


def status() -> KernelStatus:
    """Report which path projections take in this process, without building anything.

    Returns
    -------
    KernelStatus
        ``path`` ``"fused"`` or ``"stock"`` and the reason: the kernel is loaded, a verified
        library is cached, it has not been built yet (it is built on first use), or why it
        cannot be used.
    """
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    cache: Optional[Path] = None
    try:
        cache = cache_directory()
        cached = _verified(cache)
    except OSError as error:
        cache, cached = None, None
        failure = (f"its cache could not be used ({error}); training takes the stock operators. "
                   f"Set GLUON_CONSTRAINTS_CACHE to a writable directory")
    if not fused_chosen():
        return KernelStatus("stock", f"GLUON_CONSTRAINTS_FUSED={os.environ['GLUON_CONSTRAINTS_FUSED']} "
                            f"chooses the stock operators", cache, cached, compiler)
    prebuilt, level = prebuilt_library()
    if _loaded is not None and _loaded.path == prebuilt:
        return KernelStatus("fused", f"the wheel's prebuilt kernel for {level} is loaded", cache, prebuilt,
                            compiler, level)
    if _loaded is not None:
        return KernelStatus("fused", "the fused kernel is loaded", cache, cached, compiler)
    if _tried:
        return KernelStatus("stock", _unavailable, cache, cached, compiler)
    if prebuilt is not None:
        return KernelStatus("fused", f"the wheel's prebuilt kernel for {level} loads on first use", cache,
                            prebuilt, compiler, level)
    if cache is None:
        return KernelStatus("stock", failure, cache, cached, compiler)
    if cached is not None:
        return KernelStatus("fused", "a verified library is cached and loads on first use",
                            cache, cached, compiler)
    if compiler is None:
        return KernelStatus("stock", "no C++ compiler to build the fused kernel (set CXX)",
                            cache, None, None)
    blocked = _unwritable(cache)
    if blocked is not None:
        return KernelStatus(
            "stock", f"the fused kernel is not built, and cannot be built into its cache: "
            f"{blocked}; training takes the stock operators. Set GLUON_CONSTRAINTS_CACHE to a "
            f"writable directory, or build it with python -m gluon_constraints build-kernel "
            f"where its cache is writable", cache, None, compiler)
    return KernelStatus("fused", "not built yet: it is built on first use, or now with "
                        "python -m gluon_constraints build-kernel", cache, None, compiler)


def _unwritable(directory: Path) -> Optional[str]:
    """Why a build could not write into ``directory``, or None: its nearest existing ancestor
    must be a directory that takes a new file (tried with a temporary file, removed at once)."""
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a directory"
    try:
        with tempfile.TemporaryFile(dir=existing):
            return None
    except OSError as error:
        return f"{existing} cannot be written ({error.strerror or error})"


def cache_directory() -> Path:
    """Where the compiled library for this source, this mxnet and this processor is cached.

    Raises
    ------
    KernelCacheError
        If ``GLUON_CONSTRAINTS_CACHE`` is unset and there is no home directory to hold it (an
        ``OSError``, as the cache's other failures are).
    """
    features = " ".join(sorted(sources.processor_flags()))
    key = f"{sources.source_key()} {mxnet.__version__} {platform.machine()} {features}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    root = os.environ.get("GLUON_CONSTRAINTS_CACHE")
    if not root:
        try:
            root = str(Path.home() / ".cache" / "gluon_constraints")
        except RuntimeError as error:  # no HOME and no passwd entry (a container's nameless user)
            raise KernelCacheError(f"there is no home directory to hold it ({error})") from error
    return Path(root) / digest


def _load() -> Union[Kernel, str]:
    """The loaded library, or why it cannot be had (the warning's text)."""
    path, failure = prepared_library(build=True)
    if path is None:
        return failure
    try:
        return loaded(path)
    except (OSError, AttributeError) as error:
        return f"loading {path} failed ({error})."


def loaded(path: Path) -> Kernel:
    """The :class:`Kernel` of the library at ``path``, loaded and handed MXNet's C functions.

    Raises
    ------
    OSError, AttributeError
        If the file cannot be loaded or is not this library.
    """
    library = ctypes.CDLL(str(path))
    functions = [compat.c_function(name) for name in _MXNET_FUNCTIONS]
    library.gc_bind.argtypes = [ctypes.c_void_p] * len(functions)
    library.gc_bind(*functions)
    return Kernel(library, path)


def prepared_library(build: bool = True) -> Tuple[Optional[Path], str]:
    """The wheel's prebuilt library for this processor, else the verified cached library,
    built first if there is none and ``build``.

    Returns
    -------
    (Path, "") or (None, str)
        The library, or None and why there is none.
    """
    prebuilt, _ = prebuilt_library()
    if prebuilt is not None:
        return prebuilt, ""
    try:
        directory = cache_directory()
        path = _verified(directory)
        if path is not None:
            return path, ""
        if not build:
            return None, "it has not been built yet"
        return _build(directory)
    except OSError as error:
        return None, (f"its cache could not be used ({error}). Set GLUON_CONSTRAINTS_CACHE to a "
                      f"writable directory.")


def prebuilt_library(directory: Optional[Path] = None) -> Tuple[Optional[Path], Optional[str]]:
    """The wheel's library for the widest x86-64 level this processor has, and that level
    (from ``directory``, by default :data:`.sources.PREBUILT`).

    A library whose contents do not match the manifest's SHA-256 (damaged or missing), or a
    manifest that cannot be read, gives one :class:`~gluon_constraints.FusedKernelWarning`
    saying so; the next narrower level the processor runs is taken instead.

    Returns
    -------
    (Path, str) or (None, None)
        None where the package carries no prebuilt library for these sources and this machine
        (a source install), or none that this processor runs is intact.
    """
    directory = sources.PREBUILT if directory is None else directory
    manifest, problem = sources.read_manifest(directory)
    if manifest is None:
        if problem:
            _warn_damaged(directory / sources.MANIFEST, f"{problem}; the kernel is built for this machine "
                          f"instead, or the stock operators are used. Reinstall the package.")
        return None, None
    for entry in sources.runnable_variants(manifest, sources.processor_flags()):
        path = directory / entry["file"]
        if path.is_file() and _sha256(path) == entry["sha256"]:
            return path, entry["march"]
        state = ("damaged (its SHA-256 differs from the wheel's manifest)" if path.is_file()
                 else "missing (the wheel's manifest lists it)")
        _warn_damaged(path, f"the prebuilt kernel {path} is {state}; a narrower level is used if one is intact, "
                      f"else the kernel is built for this machine or the stock operators are used. Reinstall "
                      f"the package.")
    return None, None


def _warn_damaged(path: Path, message: str) -> None:
    """Warn once per process about a damaged part of an installed wheel."""
    if path not in _damaged:
        _damaged.add(path)
        warnings.warn(f"gluon-constraints: {message}", FusedKernelWarning, stacklevel=3)


_damaged: set = set()  # prebuilt libraries warned about


def _verified(directory: Path) -> Optional[Path]:
    """The cached library if ``current`` names one whose contents match its name, else None."""
    try:
        name = (directory / _POINTER).read_text().strip()
    except FileNotFoundError:
        return None
    path = directory / name
    if not (name.startswith("lib-") and name.endswith(".so")) or not path.is_file():
        return None
    return path if f"lib-{_sha256(path)}.so" == name else None


def _build(directory: Path) -> Tuple[Optional[Path], str]:
    """Compile the library into ``directory`` and point ``current`` at it: (path, '') or
    (None, why not)."""
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        return None, f"no C++ compiler was found ({os.environ.get('CXX', 'g++')!r}; set CXX to one)."
    directory.mkdir(parents=True, exist_ok=True)
    _log.warning("gluon-constraints: building its fused kernel once for this machine (10 to 70 s) "
                 "into %s", directory)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        built = Path(scratch) / "lib.so"
        result = subprocess.run(build_command(compiler, built), capture_output=True, text=True)
        if result.returncode != 0:
            said = (result.stderr or result.stdout).strip()
            return None, (f"{compiler} could not build it (exit status {result.returncode}"
                          + (f"):\n{said[-2000:]}" if said else ", and it printed nothing). Set "
                             "CXX to a working C++17 compiler."))
        name = f"lib-{_sha256(built)}.so"
        os.replace(built, directory / name)  # atomic; a concurrent build of the same bytes is equal
        pointer = Path(scratch) / _POINTER
        pointer.write_text(name)
        os.replace(pointer, directory / _POINTER)
    _log.warning("gluon-constraints: fused kernel built in %.1f s", time.monotonic() - started)
    return directory / name, ""


def build_command(compiler: str, output: Path, march: str = "native") -> List[str]:
    """The command that compiles the library into ``output`` for ``-march=<march>`` (a first-use
    build is for this processor: ``native``); see :func:`.sources.build_command`."""
    return sources.build_command(compiler, output, march)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
