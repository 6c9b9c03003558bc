"""The tree is lint-clean (ruff with the rules pyproject.toml selects) and typed (mypy on the
package, and every public name as a user's type checker sees it)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.fail("ruff is not installed: it is in the test extra (pip install -e '.[cpu,test]')")
    result = subprocess.run([ruff, "check", "--no-cache", str(ROOT)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def mypy(*arguments, cwd=ROOT, cache=None):
    """Run mypy with pyproject.toml's settings (a cache in ``cache``, not in the tree)."""
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                           "--cache-dir", str(cache), *arguments], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


def test_mypy_finds_nothing_in_the_package(tmp_path):
    result = mypy(cache=tmp_path / "cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


def test_every_public_name_has_a_type_a_type_checker_sees(tmp_path):
    # The package ships py.typed: a user's mypy must see every public name with its own type,
    # the lazily loaded ones (PEP 562 __getattr__) and the families included, never Any.
    import gluon_constraints as gc

    usage = tmp_path / "usage.py"
    usage.write_text("import gluon_constraints as gc\n" + "".join(f"reveal_type(gc.{name})\n" for name in gc.__all__))
    result = mypy(str(usage), cache=tmp_path / "cache")  # from the tree, which mypy searches first
    revealed = re.findall(r'usage\.py:(\d+): note: Revealed type is "(.*)"', result.stdout)
    assert len(revealed) == len(gc.__all__), result.stdout + result.stderr
    untyped = [gc.__all__[int(line) - 2] for line, shown in revealed if shown == "Any"]
    assert not untyped, f"public names a type checker sees as Any: {untyped}"
    assert "MaxNorm" in dict((gc.__all__[int(line) - 2], shown) for line, shown in revealed)["MaxNorm"]
