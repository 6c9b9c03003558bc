"""Every code block of the README and docs/ runs, and quoted outputs and errors are what runs.

``python`` blocks run page by page in one namespace per page, in an empty working directory:
blocks with ``>>>`` prompts through doctest (so quoted outputs and error messages are compared
with what actually happens), the others as scripts. docs/distributed.md's blocks run on real
clusters: the parameter-server block on every worker of a local ps-lite job, the Horovod block
on two Horovod workers. ``sh`` blocks are commands: the launcher's is run; the Horovod install
command must be the one ``make test`` runs. ``text`` blocks are output or layout samples.
"""

import doctest
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from processes import run

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
CLUSTER_PAGE = ROOT / "docs" / "distributed.md"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
KNOWN = {"python", "sh", "text"}


def blocks(page):
    """``(language, code, line)`` of each fenced block of ``page``."""
    text = page.read_text()
    return [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def test_every_block_says_what_it_is():
    for page in PAGES:
        for language, _, line in blocks(page):
            assert language in KNOWN, f"{page.name}:{line}: a block marked {language!r}; use python, sh or text"
        assert page.read_text().count("```") % 2 == 0, f"{page.name}: unbalanced fences"


def run_python(page, code, line, namespace):
    name = f"{page.relative_to(ROOT)}:{line}"
    if ">>> " not in code:
        exec(compile(code, name, "exec"), namespace)
        return
    test = doctest.DocTestParser().get_doctest(code, namespace, name, str(page), line)
    report = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, out=report.append, clear_globs=False)
    namespace.update(test.globs)  # doctest ran on a copy; later blocks see what this one defined
    assert runner.failures == 0, "".join(report)


@pytest.mark.parametrize("page", [p for p in PAGES if p != CLUSTER_PAGE], ids=lambda p: p.name)
def test_python_blocks_run_and_show_what_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    try:
        for language, code, line in blocks(page):
            if language == "python":
                run_python(page, code, line, namespace)
    finally:
        # A class the page registered (register_layout) keeps these globals alive through its
        # functions; clearing them frees the page's networks, as ending a program would.
        namespace.clear()


def cluster_blocks():
    return [(code, line) for language, code, line in blocks(CLUSTER_PAGE) if language == "python"]


@pytest.mark.distributed
def test_the_parameter_server_block_runs_on_every_worker_of_a_local_job(tmp_path):
    (code, _), = [(c, n) for c, n in cluster_blocks() if "mx.kv.create" in c]
    script = tmp_path / "worker.py"
    script.write_text(code)
    code_, output = run([sys.executable, "-m", "gluon_constraints.launch", "-n", "2", "-s", "1",
                         "--timeout", "150", "--", sys.executable, str(script)], timeout=180,
                        cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert code_ == 0, output


@pytest.mark.distributed
def test_the_horovod_block_runs_on_two_workers(tmp_path):
    pytest.importorskip("horovod.mxnet", reason="Horovod is installed by `make test`")
    (code, _), = [(c, n) for c, n in cluster_blocks() if "horovod" in c]
    script = tmp_path / "worker.py"
    script.write_text(code)
    horovodrun = shutil.which("horovodrun", path=str(Path(sys.executable).parent))
    code_, output = run([horovodrun, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, str(script)],
                        timeout=150, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert code_ == 0, output


@pytest.mark.distributed
def test_the_launcher_command_runs_the_example(tmp_path):
    (command,) = [c.strip() for language, c, _ in blocks(CLUSTER_PAGE)
                  if language == "sh" and c.startswith("python -m gluon_constraints.launch")]
    words = command.split()
    words = [sys.executable if w == "python" else w for w in words]
    words.insert(words.index("-m") + 2, "--timeout=150")
    code_, output = run(words + ["--epochs", "1"], timeout=180, cwd=ROOT,
                        env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert code_ == 0, output


def test_the_horovod_install_command_is_the_one_make_test_runs():
    (command,) = [c for language, c, _ in blocks(CLUSTER_PAGE) if language == "sh" and "HOROVOD_WITH_MXNET" in c]
    variables = set(re.findall(r"HOROVOD_\w+=1", command))
    makefile = (ROOT / "Makefile").read_text()
    assert variables == set(re.findall(r"HOROVOD_\w+=1", makefile))
    assert "--no-build-isolation" in command and "--no-build-isolation" in makefile


def load_api_reference():
    import importlib.util

    spec = importlib.util.spec_from_file_location("api_reference", ROOT / "docs" / "api_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_api_reference_is_current_and_lists_every_public_name():
    import gluon_constraints as gc

    reference = load_api_reference()
    text = reference.render()
    assert (ROOT / "docs" / "api.md").read_text() == text, "run python docs/api_reference.py"
    listed = [name for _, _, names in reference.SECTIONS for name in names]
    assert sorted(listed) == sorted(gc.__all__)
    for name in gc.__all__:
        assert f"### `gc.{name}" in text


def test_docstring_examples_of_public_names_run():
    # Examples in the docstrings (docs/api.md shows them) run as doctests; `gc` and `mx` are
    # imported, examples that need a trained network are marked +SKIP.
    import mxnet as mx

    import gluon_constraints as gc

    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    examples = 0
    for name in gc.__all__:
        obj = getattr(gc, name)
        if isinstance(obj, type) or callable(obj):
            for test in finder.find(obj, f"gc.{name}", globs={"gc": gc, "mx": mx}):
                examples += len(test.examples)
                runner.run(test)
    assert examples > 10 and runner.failures == 0


def test_every_test_the_docs_cite_exists():
    # The docs back their promises with named tests: each name must be a test of this suite.
    defined = {m.group(1) for path in (ROOT / "tests").glob("test_*.py")
               for m in re.finditer(r"^def (test_\w+)", path.read_text(), re.M)}
    cited = {(page.name, name) for page in PAGES for name in re.findall(r"`(test_\w+)`", page.read_text())}
    assert cited, "the docs cite no test"
    missing = sorted(f"{page}: {name}" for page, name in cited if name not in defined)
    assert not missing, missing


def test_the_documentation_site_builds_without_warnings(tmp_path):
    # mkdocs.yml: strict, so a broken link or a page missing from the navigation fails the build
    code, output = run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir",
                        str(tmp_path / "site")], timeout=180, cwd=ROOT, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert code == 0, output
    assert (tmp_path / "site" / "certification" / "index.html").exists()
    assert (tmp_path / "site" / "search" / "search_index.json").exists()  # the search box's index
