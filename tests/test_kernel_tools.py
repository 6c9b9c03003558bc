"""``python -m gluon_constraints info`` / ``build-kernel`` and the build's log lines
(docs/training.md, "Speed")."""

import os
import re
import subprocess
import sys

import pytest

BUILDING = "gluon-constraints: building its fused kernel once for this machine (10 to 70 s) into "
SILENCED = ("import logging, runpy, sys; logging.getLogger('gluon_constraints').setLevel(logging.ERROR); "
            "sys.argv = ['gluon_constraints', 'build-kernel']; runpy.run_module('gluon_constraints', "
            "run_name='__main__')")


def tool(*arguments, code=None, **env):
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "gluon_constraints", *arguments]
    return subprocess.run(command, env={**os.environ, "GLUON_CONSTRAINTS_FUSED": "1", **env},
                          capture_output=True, text=True, timeout=300)


def test_info_reports_the_mxnet_build_and_the_stock_path_when_chosen(tmp_path):
    result = tool("info", GLUON_CONSTRAINTS_FUSED="0", GLUON_CONSTRAINTS_CACHE=str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    import mxnet

    assert lines[1].startswith(f"MXNet {mxnet.__version__} (mxnet; CUDA no")
    assert lines[2] == "projections: stock MXNet operators (GLUON_CONSTRAINTS_FUSED=0 chooses the stock operators)"
    assert lines[3].startswith(f"kernel cache: {tmp_path}{os.sep}")
    assert lines[4] == "kernel library: (none yet)"


@pytest.mark.skipif(not any(os.path.exists(os.path.join(d, "g++")) for d in os.environ["PATH"].split(os.pathsep)),
                    reason="needs a C++ compiler")
def test_build_kernel_builds_logs_and_info_then_reports_the_library(tmp_path):
    before = tool("info", GLUON_CONSTRAINTS_CACHE=str(tmp_path))
    assert "projections: fused kernel (not built yet: it is built on first use, or now with python -m " \
           "gluon_constraints build-kernel)" in before.stdout
    built = tool("build-kernel", GLUON_CONSTRAINTS_CACHE=str(tmp_path))
    assert built.returncode == 0, built.stderr
    (library,) = tmp_path.glob("*/lib-*.so")
    assert built.stdout.strip() == f"gluon-constraints: fused kernel ready: {library}"
    assert BUILDING + str(library.parent) in built.stderr
    assert re.search(r"gluon-constraints: fused kernel built in \d+\.\d s", built.stderr)
    after = tool("info", GLUON_CONSTRAINTS_CACHE=str(tmp_path))
    assert "projections: fused kernel (a verified library is cached and loads on first use)" in after.stdout
    assert f"kernel library: {library}" in after.stdout
    again = tool("build-kernel", GLUON_CONSTRAINTS_CACHE=str(tmp_path))  # cached: no second build
    assert again.returncode == 0 and BUILDING not in again.stderr


def test_build_kernel_fails_with_the_reason_and_logs_through_logging(tmp_path):
    failed = tool("build-kernel", GLUON_CONSTRAINTS_CACHE=str(tmp_path / "a"), CXX="false")
    assert failed.returncode == 1
    assert BUILDING in failed.stderr
    # `false` prints nothing: its exit status is the reason, and the fix is named.
    assert re.search(r"gluon-constraints: the fused kernel cannot be built: \S*false could not build it \(exit "
                     r"status 1, and it printed nothing\)\. Set CXX to a working C\+\+17 compiler\.", failed.stderr)
    silenced = tool(code=SILENCED, GLUON_CONSTRAINTS_CACHE=str(tmp_path / "b"), CXX="false")
    assert "the fused kernel cannot be built" in silenced.stderr
    assert BUILDING not in silenced.stderr


def test_info_names_a_missing_compiler(tmp_path):
    result = tool("info", GLUON_CONSTRAINTS_CACHE=str(tmp_path), CXX="no-such-compiler-xyz")
    assert "projections: stock MXNet operators (no C++ compiler to build the fused kernel (set CXX))" in result.stdout
    assert "compiler: (none found; set CXX)" in result.stdout


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux's /proc, which no user can write")
@pytest.mark.parametrize("where", ["under-a-file", "read-only"])
def test_info_says_the_stock_path_will_be_taken_when_the_cache_cannot_be_written(tmp_path, where):
    # docs/training.md, "Speed": info tells what training will do, and how to change it.
    if where == "under-a-file":
        (tmp_path / "file").write_text("not a directory")
        cache = tmp_path / "file" / "cache"
    else:
        cache = "/proc/gluon-constraints-cache"  # not writable, even by root
    result = tool("info", GLUON_CONSTRAINTS_CACHE=str(cache))
    assert result.returncode == 0, result.stderr
    line = next(text for text in result.stdout.splitlines() if text.startswith("projections:"))
    assert line.startswith("projections: stock MXNet operators (")
    assert "training takes the stock operators. Set GLUON_CONSTRAINTS_CACHE to a writable directory" in line
    assert "built on first use" not in line


@pytest.mark.parametrize("value,fused", [("0", False), ("no", False), ("False", False), ("OFF", False),
                                         ("1", True), ("yes", True), ("true", True), ("On", True), ("", True)])
def test_the_usual_spellings_of_yes_and_no_choose_the_path(value, fused, monkeypatch):
    from gluon_constraints.kernels import library

    monkeypatch.setenv("GLUON_CONSTRAINTS_FUSED", value)
    assert library.fused_chosen() is fused
    if not fused:
        state = library.status()
        assert (state.path, state.reason) == ("stock", f"GLUON_CONSTRAINTS_FUSED={value} chooses the stock operators")


def test_an_unknown_spelling_warns_once_and_keeps_the_fused_kernel(monkeypatch):
    import warnings

    from gluon_constraints.kernels import library

    monkeypatch.setenv("GLUON_CONSTRAINTS_FUSED", "maybe")
    monkeypatch.setattr(library, "_misread", set())
    with pytest.warns(library.FusedKernelWarning, match=r"GLUON_CONSTRAINTS_FUSED='maybe' is not understood: use "
                                                        r"1, true, yes or on .* 0, false, no or off .*The fused "
                                                        r"kernel is used\."):
        assert library.fused_chosen()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert library.fused_chosen()  # once


# docs/training.md, "Speed": a wheel's prebuilt libraries, listed in its manifest, are chosen by
# the processor's flags and loaded only when their SHA-256 matches. These tests write a manifest
# in the wheel's format over stand-in files (loading is tested on a real wheel in test_wheel.py).

def prebuilt_directory(directory, corrupt=None, **overrides):
    """A stand-in prebuilt directory for these sources, with one file per level; ``corrupt``
    names a level whose file differs from its manifest hash."""
    import hashlib
    import json
    import platform

    from gluon_constraints.kernels import sources

    directory.mkdir()
    variants = []
    for variant in sources.VARIANTS:
        data = f"library for {variant.march}".encode()
        (directory / f"lib-{variant.march}.so").write_bytes(data + (b"!" if variant.march == corrupt else b""))
        variants.append({"march": variant.march, "features": sorted(variant.features),
                         "file": f"lib-{variant.march}.so", "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"source": sources.source_key(), "machine": platform.machine(), "variants": variants, **overrides}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


V3_FLAGS = frozenset("cx16 lahf_lm popcnt sse4_1 sse4_2 ssse3 avx avx2 bmi1 bmi2 f16c fma abm movbe xsave".split())


@pytest.mark.parametrize("flags,level", [(frozenset(), "x86-64"), (frozenset({"avx2", "sse4_2"}), "x86-64"),
                                         (V3_FLAGS, "x86-64-v3"),
                                         (V3_FLAGS | {"avx512f", "avx512bw", "avx512cd", "avx512dq"}, "x86-64-v3"),
                                         (V3_FLAGS | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
                                          "x86-64-v4")], ids=["none", "partial-v3", "v3", "partial-v4", "v4"])
def test_the_widest_level_the_processor_has_every_flag_of_is_chosen(flags, level, tmp_path, monkeypatch):
    from gluon_constraints.kernels import library, sources

    directory = prebuilt_directory(tmp_path / "prebuilt")
    monkeypatch.setattr(sources, "processor_flags", lambda: flags)
    assert library.prebuilt_library(directory) == (directory / f"lib-{level}.so", level)


@pytest.mark.parametrize("harm,state", [("corrupt", r"damaged \(its SHA-256 differs from the wheel's manifest\)"),
                                        ("delete", r"missing \(the wheel's manifest lists it\)")])
def test_a_damaged_prebuilt_library_warns_once_and_the_next_narrower_level_is_used(harm, state, tmp_path,
                                                                                  monkeypatch):
    import warnings

    import gluon_constraints as gc
    from gluon_constraints.kernels import library, sources

    directory = prebuilt_directory(tmp_path / "prebuilt", corrupt="x86-64-v3" if harm == "corrupt" else None)
    if harm == "delete":
        (directory / "lib-x86-64-v3.so").unlink()
    monkeypatch.setattr(sources, "processor_flags", lambda: V3_FLAGS)
    with pytest.warns(gc.FusedKernelWarning, match=rf"lib-x86-64-v3\.so is {state}; a narrower level is used"):
        assert library.prebuilt_library(directory) == (directory / "lib-x86-64.so", "x86-64")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert library.prebuilt_library(directory) == (directory / "lib-x86-64.so", "x86-64")


@pytest.mark.parametrize("manifest", ["{not json", '{"source": "x", "variants": [{"march": "x86-64"}]}'],
                         ids=["not-json", "fields-missing"])
def test_a_damaged_manifest_warns_and_no_prebuilt_library_is_used(manifest, tmp_path):
    import gluon_constraints as gc
    from gluon_constraints.kernels import library

    directory = prebuilt_directory(tmp_path / "prebuilt")
    (directory / "manifest.json").write_text(manifest)
    with pytest.warns(gc.FusedKernelWarning, match=r"manifest\.json (cannot be read|does not list its libraries)"):
        assert library.prebuilt_library(directory) == (None, None)


@pytest.mark.parametrize("overrides", [{"source": "0" * 64}, {"machine": "aarch64"}], ids=["edited", "elsewhere"])
def test_a_manifest_for_other_sources_or_another_machine_is_ignored(overrides, tmp_path):
    from gluon_constraints.kernels import library

    directory = prebuilt_directory(tmp_path / "prebuilt", **overrides)
    assert library.prebuilt_library(directory) == (None, None)


def test_info_names_the_prebuilt_level_that_loads_on_first_use(tmp_path, monkeypatch):
    from gluon_constraints import __main__ as tools
    from gluon_constraints.kernels import library, sources

    directory = prebuilt_directory(tmp_path / "prebuilt")
    monkeypatch.setattr(sources, "PREBUILT", directory)
    monkeypatch.setattr(sources, "processor_flags", lambda: V3_FLAGS)
    monkeypatch.setattr(library, "_loaded", None)
    monkeypatch.setattr(library, "_tried", False)
    monkeypatch.setenv("GLUON_CONSTRAINTS_FUSED", "1")
    state = library.status()
    assert (state.path, state.library, state.prebuilt) == ("fused", directory / "lib-x86-64-v3.so", "x86-64-v3")
    assert ("projections: fused kernel: prebuilt for x86-64-v3 (the wheel's prebuilt kernel for x86-64-v3 "
            "loads on first use)") in tools._info()


def test_choosing_the_stock_operators_reads_no_prebuilt_library(tmp_path, monkeypatch):
    import warnings

    from gluon_constraints.kernels import library, sources

    directory = prebuilt_directory(tmp_path / "prebuilt", corrupt="x86-64")  # would warn if read
    monkeypatch.setattr(sources, "PREBUILT", directory)
    monkeypatch.setenv("GLUON_CONSTRAINTS_FUSED", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert library.status().path == "stock"


def test_info_without_a_home_directory_names_the_cache_problem(tmp_path):
    # A container user with no HOME and no passwd entry: Path.home() raises RuntimeError.
    code = ("import pathlib, runpy, sys\n"
            "def no_home(): raise RuntimeError('Could not determine home directory.')\n"
            "pathlib.Path.home = staticmethod(no_home)\n"
            "sys.argv = ['gluon_constraints', 'info']\n"
            "runpy.run_module('gluon_constraints', run_name='__main__')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "GLUON_CONSTRAINTS_CACHE")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "kernel cache: (unusable)" in result.stdout
    assert "there is no home directory to hold it" in result.stdout
