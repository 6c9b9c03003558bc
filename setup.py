"""Builds gluon-constraints; a wheel built on x86-64 Linux carries the fused kernel prebuilt.

Everything else is declared in pyproject.toml. Here ``build_py`` compiles the kernel for three
x86-64 levels into the wheel (``gluon_constraints/kernels/sources.py`` says which, and how the
package picks one when it loads), and ``bdist_wheel`` then tags the wheel ``py3-none-linux_x86_64``:
the libraries do not depend on the Python version. ``auditwheel repair`` (``make wheel``) checks
them against the manylinux policies and renames the wheel.

The kernel is prebuilt by a regular (not editable) build on x86-64 Linux with a C++ compiler
(``$CXX``, else ``g++``). ``GLUON_CONSTRAINTS_PREBUILT=0`` skips it; ``=1`` makes a build without
a compiler fail instead of making a pure-Python wheel. Without the prebuilt kernel the package
builds its kernel on first use, as a source install does.
"""

import functools
import importlib.util
import os
import platform
import shutil
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _sources():
    """gluon_constraints/kernels/sources.py, loaded by its path (the package imports mxnet)."""
    spec = importlib.util.spec_from_file_location("_gluon_constraints_sources",
                                                  HERE / "gluon_constraints" / "kernels" / "sources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=None)
def _compiler():
    """The compiler that prebuilds the kernel, or None when this build does not prebuild it."""
    choice = os.environ.get("GLUON_CONSTRAINTS_PREBUILT", "").strip().lower()
    if choice in ("0", "false", "no", "off"):
        return None
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    supported = sys.platform.startswith("linux") and platform.machine() == "x86_64"
    if choice in ("1", "true", "yes", "on") and (compiler is None or not supported):
        raise SystemExit(f"GLUON_CONSTRAINTS_PREBUILT={choice} asks for the prebuilt kernel, which needs x86-64 "
                         f"Linux (this is {sys.platform} {platform.machine()}) and a C++ compiler "
                         f"(CXX={os.environ.get('CXX', 'g++')!r} is {compiler or 'not found'}).")
    if compiler is None or not supported:
        print("gluon-constraints: building a pure-Python wheel (the fused kernel is built on first use): "
              + ("no C++ compiler" if compiler is None else f"no prebuilt kernel for {platform.machine()}"))
        return None
    return compiler


class BuildWithKernel(build_py):
    """``build_py``, then the prebuilt kernel into the build's ``gluon_constraints/kernels/prebuilt``."""

    def run(self):
        super().run()
        compiler = None if self.editable_mode else _compiler()
        if compiler is not None:
            target = Path(self.build_lib) / "gluon_constraints" / "kernels" / "prebuilt"
            print(f"gluon-constraints: prebuilding the fused kernel with {compiler} into {target}")
            manifest, failure = _sources().build_variants(target, compiler)
            if manifest is None:
                raise SystemExit(f"{failure}\nSet GLUON_CONSTRAINTS_PREBUILT=0 to build without the prebuilt kernel.")


class KernelDistribution(Distribution):
    """A distribution with platform-specific contents when it carries the prebuilt kernel (so
    the whole package installs into platlib, as a package with compiled extensions does)."""

    def has_ext_modules(self):
        return _compiler() is not None


class PlatformWheel(bdist_wheel):
    """A wheel tagged for this platform (any Python 3) when it carries the prebuilt kernel."""

    def get_tag(self):
        python, abi, plat = super().get_tag()
        return (python, abi, plat) if self.root_is_pure else ("py3", "none", plat)


setup(distclass=KernelDistribution, cmdclass={"build_py": BuildWithKernel, "bdist_wheel": PlatformWheel})
