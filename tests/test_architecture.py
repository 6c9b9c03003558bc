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
    "certify": {"errors", "_mxnet_compat", "catalogue", "gluon"},
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


def module_name(path):
    """``path``'s dotted module name inside the package (``catalogue.norms``; ``__init__`` is
    the package itself)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(path):
    """The package's modules ``path`` imports, at import time or inside functions."""
    tree = ast.parse(path.read_text())
    here = module_name(path).split(".") if module_name(path) else []
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            target = base + (node.module.split(".") if node.module else [])
            for alias in node.names:
                candidate = ".".join(target + [alias.name])
                exists = (PACKAGE / candidate.replace(".", "/")).with_suffix(".py").exists() \
                    or (PACKAGE / candidate.replace(".", "/") / "__init__.py").exists()
                found.add(candidate if exists else ".".join(target))
    return {name for name in found if name}


def test_the_import_graph_has_no_circle():
    # docs/architecture.md: imports flow one way, inside the layers too. Imports inside
    # functions count: they used to hide the catalogue's circle (registry, compose, schedule).
    graph = {module_name(path): package_imports(path) for path in modules() if module_name(path)}
    visiting, done, cycles = set(), set(), []

    def visit(name, trail):
        if name in done:
            return
        if name in visiting:
            cycles.append(" -> ".join(trail[trail.index(name):] + [name]))
            return
        visiting.add(name)
        for target in sorted(graph.get(name, ())):
            visit(target, trail + [name])
        visiting.discard(name)
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert not cycles, "\n".join(cycles)


def test_one_fused_step_passes_through_each_subpackage_once():
    # docs/architecture.md, "One training step": from the wrapper's update to the kernel call,
    # the calls enter training/ (the wrapper, the update rules, the fused update) and then
    # kernels/, without going back.
    import sys

    import mxnet as mx
    from mxnet import autograd

    import gluon_constraints as gc
    from gluon_constraints import nn
    from gluon_constraints.kernels import library
    from gluon_constraints.training.optimizer import ConstrainedOptimizer

    if library.kernel() is None:
        pytest.skip("the fused kernel is not available here")
    net = nn.Dense(8, in_units=4, weight_constraint=gc.MaxNorm(0.5))
    net.initialize()
    trainer = gc.ConstrainedTrainer(net.collect_params(), "adam", {"learning_rate": 0.1})

    def step():
        with autograd.record():
            loss = net(mx.nd.ones((2, 4))).sum()
        loss.backward()
        trainer.step(2)

    step()  # the first step builds the records; the question is about every later one
    entered = []

    def profile(frame, event, arg):
        if event == "call":
            name = frame.f_globals.get("__name__", "")
            if name.startswith("gluon_constraints.") and "._mxnet_compat" not in name:
                entered.append(name.split(".")[1])

    original = ConstrainedOptimizer.update_multi_precision

    def traced(self, *arguments):
        sys.setprofile(profile)
        try:
            return original(self, *arguments)
        finally:
            sys.setprofile(None)

    ConstrainedOptimizer.update_multi_precision = traced
    try:
        step()
    finally:
        ConstrainedOptimizer.update_multi_precision = original
    mx.nd.waitall()
    passes = [name for at, name in enumerate(entered) if at == 0 or entered[at - 1] != name]
    assert passes == ["training", "kernels"], passes


def test_the_kernel_boundary_has_the_same_layout_on_both_sides():
    # kernels/boundary.py declares the C++ structs with ctypes; the library reports its own
    # sizes and offsets, which must be the same field by field.
    import ctypes

    from gluon_constraints.kernels import boundary, library

    kernel = library.kernel()
    if kernel is None:
        pytest.skip("the fused kernel is not available here")
    for structure, name in ((boundary.UnitGroup, "gc_unit_group"), (boundary.UpdateRule, "gc_update_rule"),
                            (boundary.Rates, "gc_rates")):
        assert kernel.layout(name) == ctypes.sizeof(structure), name
        for field, _ in structure._fields_:
            assert kernel.layout(name, field) == getattr(structure, field).offset, f"{name}.{field}"
    assert kernel.layout("gc_unit_group", "no_such_field") == -1


def test_each_mxnet_object_gets_one_record_of_ours():
    # docs/architecture.md, "What the package adds to MXNet's objects": a trainer, a parameter
    # and a block each get one attribute, _gluon_constraints (a parameter also its public
    # constraint, and the one instance method MXNet leaves no other way to have, _init_impl);
    # an enforced trainer's class is its own class with the mixin, nothing replaced on it.
    import copy

    import mxnet as mx
    from mxnet import autograd, gluon

    import gluon_constraints as gc
    from gluon_constraints import nn

    net = nn.HybridSequential()
    net.add(nn.Dense(8, in_units=4, weight_constraint=gc.MaxNorm(0.5)), nn.Dense(2, in_units=8))
    net.initialize(ctx=[mx.cpu(0), mx.cpu(1)])
    plain = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 0.1})
    trainer = gc.enforce(plain, monitor=True)
    for _ in range(2):
        xs = gluon.utils.split_and_load(mx.nd.ones((4, 4)), [mx.cpu(0), mx.cpu(1)])
        with autograd.record():
            losses = [net(x).sum() for x in xs]
        for loss in losses:
            loss.backward()
        trainer.step(4)
    gc.apply_constraints(net)
    ours = re.compile(r"_?gc_|_gluon_constraints")
    assert [k for k in vars(trainer) if ours.search(k)] == ["_gluon_constraints"]
    assert type(trainer).__bases__ == (gc.training.trainer.EnforcedTraining, gluon.Trainer)
    assert not [k for k, v in vars(trainer).items() if callable(v) and not isinstance(v, type)
                and k not in vars(gluon.Trainer(net.collect_params(), "sgd"))]
    weight = net[0].weight
    added = {k for k in vars(weight) if ours.search(k) or k in ("constraint", "_init_impl")}
    assert added == {"constraint", "_gluon_constraints", "_init_impl"}
    assert {k for k in vars(net) if ours.search(k)} == {"_gluon_constraints"}
    # A copy (of a network no multi-context trainer has stepped: MXNet cannot copy those) gets
    # the parameter's record, less its checked projection, and not the block's.
    original = nn.Dense(8, in_units=4, weight_constraint=gc.MaxNorm(0.5))
    original.initialize()
    gc.apply_constraints(original)
    assert original.weight._gluon_constraints.checked is not None
    twin = copy.deepcopy(original)
    assert vars(twin).get("_gluon_constraints") is None  # a copy starts afresh
    assert twin.weight._gluon_constraints.owner[0] is twin
    assert twin.weight._gluon_constraints.checked is None


def test_a_family_is_one_module(tmp_path):
    # docs/architecture.md, "Adding a family": the module shown there, added to a copy of the
    # package, is registered, named by the package and listed in the API reference, and
    # projects; nothing else of the package changes.
    import shutil
    import subprocess
    import sys

    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    start = text.index("written as `catalogue/hard_box.py`")
    opening = text.index("```text\n", start)
    module = text[opening + len("```text\n"):text.index("```", opening + 7)]
    copy = tmp_path / "gluon_constraints"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "catalogue" / "hard_box.py").write_text(module)
    check = (
        "import sys, runpy\n"
        "import mxnet as mx\n"
        "import gluon_constraints as gc\n"
        f"assert gc.__file__.startswith({str(tmp_path)!r}), gc.__file__\n"
        "c = gc.get('hard_box')\n"
        "assert type(c) is gc.HardBox and 'HardBox' in gc.__all__\n"
        "assert gc.deserialize(gc.serialize(gc.HardBox(0.5))) == gc.HardBox(0.5)\n"
        "assert gc.HardBox(0.5)(mx.nd.array([[-2.0, 0.25, 3.0]])).asnumpy().tolist() == [[-0.5, 0.25, 0.5]]\n"
        f"namespace = runpy.run_path({str(PACKAGE.parent / 'docs' / 'api_reference.py')!r}, run_name='render')\n"
        "assert '### `gc.HardBox(bound=1.0)`' in namespace['render']()\n"
        "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
