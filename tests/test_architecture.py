"""The package's layers and their rules (docs/architecture.md), checked on the source."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gluon_constraints"

# What each layer may import from the package, besides itself (docs/architecture.md).
ALLOWED = {
    "catalogue": {"errors"},
    "kernels": {"errors", "_mxnet_compat", "catalogue"},
    "gluon": {"errors", "_mxnet_compat", "catalogue"},
    "distributed": {"errors", "_mxnet_compat", "catalogue", "gluon"},
    "training": {"errors", "_mxnet_compat", "catalogue", "kernels", "gluon", "distributed"},
}
# MXNet's private attributes the package touches; only _mxnet_compat.py may name them.
PRIVATE = re.compile(
    r"\.(_kvstore|_params|_optimizer|_reg_params|_init_impl|_update_count|_get_lrs|_get_wds|"
    r"_children|_op_name|_kwargs|_stype|_trainer|_data|_distributed|_update_on_kvstore|"
    r"_kv_initialized|_contains_sparse_grad|_kvstore_params|_updaters|_updater|_barrier|"
    r"_init_params|_init_optimizer|_Conv|_RNNLayer|_set_current_context|_all_index_update_counts|_index_update_count|_fresh_grad|_deferred_init|"
    r"_collect_params_with_prefix)\b")


def modules(layer=None):
    root = PACKAGE / layer if layer else PACKAGE
    return sorted(p for p in root.rglob("*.py"))


def imports(path):
    """(package-relative top-level module or subpackage, mxnet module) names ``path`` imports."""
    tree = ast.parse(path.read_text())
    depth = len(path.relative_to(PACKAGE).parts) - 1
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(path.relative_to(PACKAGE).parts[:depth])[: depth - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
                names = [target[0]] if target else [alias.name for alias in node.names]
                found.update(("package", n) for n in names)
            elif node.module:
                found.update(("absolute", f"{node.module}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(("absolute", alias.name) for alias in node.names)
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(layer):
    wrong = []
    for path in modules(layer):
        for kind, name in imports(path):
            if kind == "package" and name != layer and name not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
            if kind == "absolute" and name.startswith("gluon_constraints"):
                wrong.append(f"{path.relative_to(PACKAGE)} imports {name} absolutely")
    assert not wrong, "\n".join(wrong)


def top_level_imports(path):
    """The absolute module names ``path`` imports at import time (outside functions)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_catalogue_imports_nothing_of_mxnet_but_ndarray_at_import_time():
    # Parameter servers import the catalogue while `import mxnet` is still running.
    for path in modules("catalogue"):
        mxnet_imports = {name for name in top_level_imports(path) if name.startswith("mxnet")}
        assert all(n.startswith("mxnet.ndarray") for n in mxnet_imports), f"{path.name} imports {mxnet_imports}"


def test_the_optimizer_wrapper_that_servers_unpickle_does_not_import_gluon_at_import_time():
    for name in ("training/optimizer.py", "kernels/projection.py", "kernels/library.py", "_mxnet_compat.py"):
        tree = ast.parse((PACKAGE / name).read_text())
        top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        for node in top_level:
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            assert not (module or "").startswith("mxnet.gluon"), f"{name} imports {module} at import time"
            relative = isinstance(node, ast.ImportFrom) and node.level
            assert not (relative and module and module.startswith("gluon")), f"{name} imports the gluon layer"


def test_only_the_compat_module_touches_mxnet_private_attributes():
    offenders = []
    for path in modules():
        if path.name == "_mxnet_compat.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if PRIVATE.search(code) and not code.strip().startswith(('"', "'")):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_every_exception_and_warning_lives_in_errors_and_is_exported():
    import gluon_constraints as gc
    from gluon_constraints import errors

    for path in modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and path.name != "errors.py":
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                assert not any(b.endswith(("Error", "Exception", "Warning")) for b in bases), \
                    f"{path.name} defines exception {node.name}"
    for name in errors.__all__:
        assert getattr(gc, name) is getattr(errors, name) and name in gc.__all__


def test_help_opens_with_what_the_library_does_and_an_example_that_runs():
    import textwrap

    import gluon_constraints as gc

    lines = gc.__doc__.splitlines()
    assert lines[0].startswith("Keras-style weight constraints for Apache MXNet Gluon")
    start = lines.index("Example::") + 2
    example = textwrap.dedent("\n".join(lines[start:start + 5]))
    namespace = {}
    exec(compile(example, "gluon_constraints.__doc__", "exec"), namespace)
    assert isinstance(namespace["trainer"], gc.ConstrainedTrainer)
    assert namespace["net"].weight.constraint == gc.MaxNorm(3.0)


def raised_types(path):
    """``(line, raised name, enclosing function)`` of each ``raise X(...)``/``raise x`` in ``path``."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Raise) and child.exc is not None:
                exc = child.exc.func if isinstance(child.exc, ast.Call) else child.exc
                name = exc.id if isinstance(exc, ast.Name) else getattr(exc, "attr", type(exc).__name__)
                found.append((child.lineno, name, inner, isinstance(child.exc, ast.Call)))
            visit(child, inner)

    visit(tree, None)
    return found


def test_every_raise_is_a_type_of_errors_py():
    # docs/architecture.md, "Errors": every exception the package raises is one of errors.py's,
    # whose message names the object, the value and the fix. Besides re-raising an error built
    # elsewhere, only Python's and argparse's protocols raise their own types: AttributeError
    # from __getattr__ (a missing attribute), argparse.ArgumentTypeError from an argparse type.
    from gluon_constraints import errors

    wrong = []
    for path in modules():
        for line, name, function, called in raised_types(path):
            if name in errors.__all__ or not called or name == "_failed":
                continue  # ours, or re-raising an error already built
            if (name, function) == ("AttributeError", "__getattr__"):
                continue
            if name == "ArgumentTypeError" and path.name == "launch.py":
                continue
            wrong.append(f"{path.relative_to(PACKAGE)}:{line}: raise {name} in {function}")
    assert not wrong, "\n".join(wrong)
