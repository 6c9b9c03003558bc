"""Installing beside any MXNet 1.9 build, and clear errors without one (README, "Installation").

MXNet's CPU and GPU builds are different distributions (mxnet, mxnet-cu112, ...) that install the
same ``mxnet`` module. pip's own resolver, run offline on a local index of small stand-in wheels,
shows that gluon-constraints installs beside a GPU build without pulling the CPU one, and that
the ``cpu`` extra pulls it.
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# These tests are about what pip resolves; pure-Python wheels build faster (tests/test_wheel.py
# builds the one with the prebuilt kernel).
PURE = {**os.environ, "GLUON_CONSTRAINTS_PREBUILT": "0"}
PREBUILDS = (sys.platform.startswith("linux") and platform.machine() == "x86_64"
             and shutil.which(os.environ.get("CXX", "g++")) is not None)


def stand_in_wheel(directory, name, version, module):
    """A minimal wheel of distribution ``name`` providing an empty top-level ``module``."""
    dist = f"{name.replace('-', '_')}-{version}"
    path = directory / f"{dist}-py3-none-any.whl"
    files = {
        f"{module}/__init__.py": "",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}.dist-info/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as wheel:
        for name_in_zip, text in files.items():
            wheel.writestr(name_in_zip, text)
    return path


@pytest.fixture(scope="module")
def local_index(tmp_path_factory):
    """Our wheel, stand-ins for our dependencies, MXNet's CPU build and a GPU build."""
    index = tmp_path_factory.mktemp("index")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(index), str(ROOT)], check=True, timeout=300, env=PURE)
    stand_in_wheel(index, "numpy", "1.23.5", "numpy")
    stand_in_wheel(index, "typing-extensions", "4.12.2", "typing_extensions")
    stand_in_wheel(index, "threadpoolctl", "3.5.0", "threadpoolctl")
    stand_in_wheel(index, "mxnet", "1.9.1", "mxnet")
    stand_in_wheel(index, "mxnet-cu999", "1.9.1", "mxnet")
    return index


def resolve(tmp_path, index, *requirements):
    """The distributions pip would install into an empty environment, by name."""
    environment = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(environment)], check=True, timeout=120)
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(environment / "bin" / "python"),
                    "install", "--quiet", "--dry-run", "--no-index", "--find-links", str(index),
                    "--report", str(report), *requirements],
                   check=True, timeout=300, env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    return sorted(item["metadata"]["name"] for item in json.loads(report.read_text())["install"])


def test_installing_beside_a_gpu_build_does_not_pull_the_cpu_build(tmp_path, local_index):
    chosen = resolve(tmp_path, local_index, "mxnet-cu999==1.9.1", "gluon-constraints")
    assert chosen == ["gluon-constraints", "mxnet-cu999", "numpy", "threadpoolctl", "typing-extensions"]


def test_the_cpu_extra_pulls_the_cpu_build(tmp_path, local_index):
    chosen = resolve(tmp_path, local_index, "gluon-constraints[cpu]")
    assert chosen == ["gluon-constraints", "mxnet", "numpy", "threadpoolctl", "typing-extensions"]


def test_the_readme_install_commands_resolve(tmp_path, local_index):
    # README, "Installation": a wheel file with the cpu extra resolves to the package and the CPU
    # build; the clone (the fixture built its wheel from it) and the repository URL both build.
    import gluon_constraints

    wheel = next(local_index.glob("gluon_constraints-*.whl"))
    assert wheel.name.startswith(f"gluon_constraints-{gluon_constraints.__version__}-")  # one version source
    assert resolve(tmp_path, local_index, f"{wheel}[cpu]") == ["gluon-constraints", "mxnet", "numpy",
                                                              "threadpoolctl", "typing-extensions"]
    built = tmp_path / "from-git"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(built), f"gluon-constraints[cpu] @ git+file://{ROOT}"],
                   check=True, timeout=600, env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    # As a user runs it: with a compiler on x86-64 Linux the wheel carries the prebuilt kernel
    # (tests/test_wheel.py checks such a wheel), elsewhere it is pure Python.
    [from_git] = [p.name for p in built.iterdir()]
    assert from_git == wheel.name.replace("-any.whl", f"-{'linux_x86_64' if PREBUILDS else 'any'}.whl")


def import_with_fake_mxnet(tmp_path, mxnet_source):
    """Import gluon_constraints in a fresh process whose ``mxnet`` is ``mxnet_source`` (None: absent)."""
    fake = tmp_path / "fake"
    fake.mkdir()
    if mxnet_source is None:
        setup = "import sys; sys.modules['mxnet'] = None; "  # as if no mxnet were installed
    else:
        (fake / "mxnet").mkdir()
        (fake / "mxnet" / "__init__.py").write_text(mxnet_source)
        setup = ""
    return subprocess.run([sys.executable, "-c", setup + "import gluon_constraints"],
                          env={**os.environ, "PYTHONPATH": f"{fake}{os.pathsep}{ROOT}"},
                          capture_output=True, text=True, timeout=120)


def test_importing_without_mxnet_says_what_to_install(tmp_path):
    result = import_with_fake_mxnet(tmp_path, None)
    assert result.returncode != 0
    assert ("DependencyError: gluon-constraints needs MXNet 1.9.x, and no mxnet module is installed. "
            "Install the CPU build with pip install 'mxnet==1.9.1' 'numpy<1.24'") in result.stderr


def test_importing_beside_an_unsupported_mxnet_says_which_versions_work(tmp_path):
    result = import_with_fake_mxnet(tmp_path, "__version__ = '2.0.0'\n")
    assert result.returncode != 0
    assert ("DependencyError: gluon-constraints supports MXNet 1.9.x (any build: mxnet, mxnet-cu112, "
            "mxnet-cu117, ...): found mxnet 2.0.0.") in result.stderr
