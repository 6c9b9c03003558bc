"""Builds gluon-constraints; a wheel built on x86-64 Linux carries the fused kernel prebuilt.

Everything else is declared in pyproject.toml. Here ``build_py`` compiles the kernel for three
x86-64 levels into the build (``gluon_constraints/kernels/sources.py`` says which, and how the
package picks one when it loads); a wheel that carries them is tagged ``py3-none-linux_x86_64``
(the libraries do not depend on the Python version), and ``auditwheel repair`` (``make wheel``)
checks them against the manylinux policies and renames the wheel.

``GLUON_CONSTRAINTS_PREBUILT`` chooses:

- unset (or ``auto``): prebuild in a regular (not editable) build on x86-64 Linux with a C++
  compiler (``$CXX``, else ``g++``); where there is none, or it cannot build every level (GCC
  before 11 knows no ``-march=x86-64-v3``), say so and make a pure-Python wheel;
- ``1`` (``true``, ``yes``, ``on``): prebuild or fail, saying why (``make wheel`` sets it);
- ``0`` (``false``, ``no``, ``off``): make a pure-Python wheel.

Without the prebuilt kernel the package builds its kernel on first use, as an editable install
does.
"""

import importlib.util
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
_CHOICES = {**dict.fromkeys(("", "auto"), "auto"), **dict.fromkeys(("1", "true", "yes", "on"), "required"),
            **dict.fromkeys(("0", "false", "no", "off"), "off")}


def _sources():
    """gluon_constraints/kernels/sources.py, loaded by its path (the package imports mxnet)."""
    spec = importlib.util.spec_from_file_location("_gluon_constraints_sources",
                                                  HERE / "gluon_constraints" / "kernels" / "sources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _choice():
    value = os.environ.get("GLUON_CONSTRAINTS_PREBUILT", "")
    choice = _CHOICES.get(value.strip().lower())
    if choice is None:
        raise SystemExit(f"GLUON_CONSTRAINTS_PREBUILT={value!r} is not understood: use 1, true, yes or on to "
                         f"require the prebuilt kernel, 0, false, no or off for a pure-Python wheel, or leave "
                         f"it unset (auto).")
    return choice


def _prebuild(target):
    """Compile every level into ``target``: None, or why not (no compiler, another platform, a
    compiler that cannot)."""
    if not (sys.platform.startswith("linux") and platform.machine() == "x86_64"):
        return f"the prebuilt kernel is for x86-64 Linux, and this is {sys.platform} {platform.machine()}"
    named = os.environ.get("CXX", "g++")
    compiler = shutil.which(named)
    if compiler is None:
        return f"no C++ compiler was found (CXX={named!r})"
    print(f"gluon-constraints: prebuilding the fused kernel with {compiler} into {target}")
    with tempfile.TemporaryDirectory() as scratch:  # nothing half-built lands in the build
        manifest, failure = _sources().build_variants(Path(scratch), compiler)
        if manifest is None:
            return failure
        shutil.copytree(scratch, target)
    return None


class KernelDistribution(Distribution):
    """A distribution with platform-specific contents once ``build_py`` has prebuilt the kernel
    (so the package installs into platlib, as one with compiled extensions does)."""

    kernel_prebuilt = False

    def has_ext_modules(self):
        return self.kernel_prebuilt


class BuildWithKernel(build_py):
    """``build_py``, then the prebuilt kernel into the build's ``gluon_constraints/kernels/prebuilt``."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "gluon_constraints" / "kernels" / "prebuilt"
        shutil.rmtree(target, ignore_errors=True)  # an earlier build's, if any
        choice = _choice()
        if self.editable_mode or choice == "off":
            return
        failure = _prebuild(target)
        if failure is None:
            self.distribution.kernel_prebuilt = True
        elif choice == "required":
            raise SystemExit(f"GLUON_CONSTRAINTS_PREBUILT asks for the prebuilt kernel, but {failure}. Set "
                             f"GLUON_CONSTRAINTS_PREBUILT=0 for a pure-Python wheel.")
        else:
            print(f"gluon-constraints: building without the prebuilt kernel (it is built on first use where a "
                  f"compiler exists): {failure}")


class PlatformWheel(bdist_wheel):
    """A wheel tagged for this platform (any Python 3) when it carries the prebuilt kernel."""

    def run(self):
        self.run_command("build")  # decides whether the kernel is prebuilt; run() does not build again
        self.root_is_pure = not self.distribution.kernel_prebuilt
        super().run()

    def get_tag(self):
        python, abi, plat = super().get_tag()
        return (python, abi, plat) if self.root_is_pure else ("py3", "none", plat)


setup(distclass=KernelDistribution, cmdclass={"build_py": BuildWithKernel, "bdist_wheel": PlatformWheel})
