"""The fused kernel's sources, its compiler command, and the prebuilt variants a wheel carries.

This module imports nothing outside the standard library: ``setup.py`` loads it by its path to
build the wheel's kernels without importing the package (which needs mxnet).

The library is compiled from ``project_rows.cc`` (the kernels), ``libstdcxx_compat.cc`` and
MXNet 1.9.1's ``lib_api.cc`` with its header (the interface through which MXNet loads a library's
operators, Apache-2.0, copied unchanged into ``mxnet_lib_api/`` so that a build needs no mxnet).
It links the C++ runtime dynamically, as MXNet itself does; every symbol the library needs is in
glibc 2.14, libstdc++ 3.4.21 (GCC 5) and libgomp 4.5 (GCC 6), within ``manylinux_2_24``.

A wheel carries the library for three x86-64 levels, each built with ``-march=<level>``:
``x86-64`` (the SSE2 baseline every x86-64 processor has), ``x86-64-v3`` (AVX2) and
``x86-64-v4`` (AVX-512). :func:`runnable_variants` lists those whose instruction sets the processor
has, widest first, from the flags Linux reports in ``/proc/cpuinfo`` (which include only what the
kernel has enabled). Without fused multiply-adds (``-ffp-contract=off``) the updates are
elementwise and give the same bits on every level; the float64 norms, summed in other orders, may
round a projected entry to a neighbouring float32 (one unit in the last place).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, NamedTuple, Optional, Sequence, Tuple

__all__ = ["SOURCES", "INCLUDE", "EXPORTS", "FLAGS", "VARIANTS", "Variant", "PREBUILT", "source_key",
           "build_command", "build_variants", "read_manifest", "processor_flags", "runnable_variants"]

DIRECTORY = Path(__file__).resolve().parent
SOURCES = (DIRECTORY / "project_rows.cc", DIRECTORY / "libstdcxx_compat.cc", DIRECTORY / "mxnet_lib_api" / "lib_api.cc")
INCLUDE = DIRECTORY / "mxnet_lib_api" / "include"
EXPORTS = DIRECTORY / "exports.map"
# -ffp-contract=off: no fused multiply-adds, so the updates round like MXNet's own kernels.
# -fno-math-errno: sqrt without errno, so Adam's and RMSProp's loops vectorise (4 times faster;
# the square root is the same correctly rounded one). The version script exports only the C entry
# points; -Bsymbolic binds the library's own symbols to itself.
FLAGS = ("-shared", "-fPIC", "-std=c++17", "-O3", "-ffp-contract=off", "-fno-math-errno", "-fopenmp",
         "-Wl,-Bsymbolic")
# Where a wheel's prebuilt libraries and their manifest are installed, inside the package.
PREBUILT = DIRECTORY / "prebuilt"
MANIFEST = "manifest.json"

# x86-64 micro-architecture levels (the psABI's), by the /proc/cpuinfo flags each one needs.
_V2 = ("cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3")
_V3 = (*_V2, "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave")
_V4 = (*_V3, "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")


class Variant(NamedTuple):
    """One prebuilt library: compiled with ``-march=<march>``, loadable where the processor has
    every flag of ``features``."""

    march: str
    features: FrozenSet[str]


# Widest first: the first that the processor supports is loaded.
VARIANTS = (Variant("x86-64-v4", frozenset(_V4)), Variant("x86-64-v3", frozenset(_V3)),
            Variant("x86-64", frozenset()))


def source_key() -> str:
    """SHA-256 of everything a build compiles and its flags (not ``-march``): a prebuilt library
    is used only by the sources it was built from."""
    digest = hashlib.sha256()
    for path in (*SOURCES, INCLUDE / "mxnet" / "lib_api.h", EXPORTS):
        digest.update(path.read_bytes())
    digest.update(" ".join(FLAGS).encode())
    return digest.hexdigest()


def build_command(compiler: str, output: Path, march: str) -> List[str]:
    """The command that compiles the library into ``output`` for ``-march=<march>``."""
    # -ffile-prefix-map: the source paths the library records do not depend on where it was built.
    return [compiler, *FLAGS, f"-march={march}", f"-ffile-prefix-map={DIRECTORY}=gluon_constraints/kernels",
            f"-Wl,--version-script={EXPORTS}", *map(str, SOURCES), "-I", str(INCLUDE), "-o", str(output)]


def build_variants(directory: Path, compiler: str, variants: Sequence[Variant] = VARIANTS,
                   timeout: float = 600.0) -> Tuple[Optional[Dict[str, Any]], str]:
    """Compile every variant into ``directory`` (in parallel) and write its manifest.

    The manifest (``manifest.json``) records :func:`source_key`, the machine architecture and,
    per variant, its ``march``, the processor flags it needs, its file and the file's SHA-256.

    Returns
    -------
    (dict, "") or (None, str)
        The manifest written, or None and why not: the compiler's failure, with its output
        (then no manifest is written).
    """
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        logs = {v.march: Path(scratch) / f"{v.march}.log" for v in variants}
        running = []
        try:
            for variant in variants:
                with logs[variant.march].open("w") as log:
                    running.append((variant, subprocess.Popen(  # its own group: the driver and its children
                        build_command(compiler, directory / f"lib-{variant.march}.so", variant.march),
                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)))
            for variant, process in running:
                try:
                    code = process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    return None, (f"{compiler} did not build the fused kernel for -march={variant.march} "
                                  f"in {timeout:.0f} s")
                if code != 0:
                    said = logs[variant.march].read_text().strip()[-2000:] or "(it printed nothing)"
                    return None, (f"{compiler} could not build the fused kernel for -march={variant.march} "
                                  f"(exit status {code}):\n{said}")
        finally:  # after a failure, the other levels' compilers (cc1plus, as, ld too) are stopped
            for _, process in running:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
    manifest: Dict[str, Any] = {"source": source_key(), "machine": platform.machine(), "variants": [
        {"march": v.march, "features": sorted(v.features), "file": f"lib-{v.march}.so",
         "sha256": hashlib.sha256((directory / f"lib-{v.march}.so").read_bytes()).hexdigest()}
        for v in variants]}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest, ""


def read_manifest(directory: Path = PREBUILT) -> Tuple[Optional[dict], str]:
    """The prebuilt libraries' manifest in ``directory``, and what is wrong with it.

    Returns
    -------
    (dict, "") or (None, str)
        The manifest; or None and "" where there is none (a source install) or it was written
        for other sources (an edited source tree) or another machine architecture; or None and
        why it cannot be read (a damaged install).
    """
    path = directory / MANIFEST
    if not path.is_file():
        return None, ""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return None, f"{path} cannot be read ({error})"
    fields = {"march": str, "features": list, "file": str, "sha256": str}
    if not (isinstance(manifest, dict) and isinstance(manifest.get("variants"), list) and all(
            isinstance(entry, dict) and all(isinstance(entry.get(k), t) for k, t in fields.items())
            for entry in manifest["variants"])):
        return None, f"{path} does not list its libraries as a wheel's manifest does"
    if manifest.get("machine") != platform.machine() or manifest.get("source") != source_key():
        return None, ""
    return manifest, ""


def processor_flags() -> FrozenSet[str]:
    """The instruction-set flags Linux reports for this processor (empty where it reports none)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((line for line in cpuinfo.splitlines() if line.startswith(("flags", "Features"))), "")
    return frozenset(line.partition(":")[2].split())


def runnable_variants(manifest: dict, flags: FrozenSet[str]) -> List[dict]:
    """The manifest's variants whose features ``flags`` all has, widest first (the manifest's
    order)."""
    return [entry for entry in manifest["variants"] if flags >= set(entry["features"])]
