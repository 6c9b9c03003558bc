"""Write docs/api.md, the API reference, from the package's docstrings.

``python docs/api_reference.py`` rewrites docs/api.md; ``--check`` exits 1 if it is out of date
(tests/test_docs.py checks the same). Every name in ``gluon_constraints.__all__`` is listed
once, in the sections below, with its signature and docstring.
"""

import argparse
import inspect
import sys
from pathlib import Path

import gluon_constraints as gc
from gluon_constraints import errors
from gluon_constraints.catalogue import FAMILIES as FAMILY_NAMES

TARGET = Path(__file__).with_name("api.md")
# The catalogue's families, as each registered itself where it is defined (a new family's
# module adds it here), and the Keras aliases some of them declared.
FAMILIES = [name for name, obj in FAMILY_NAMES.items() if name == obj.__name__]
ALIASES = [name for name, obj in FAMILY_NAMES.items() if name != obj.__name__]
SECTIONS = [
    ("Constraints", "The catalogue: each object projects a weight onto a set "
                    "([constraints.md](constraints.md)).",
     ["Constraint", *FAMILIES, "Function", "Reduction"]),
    ("Names and configs", "Looking constraints up, serializing them, registering new ones; "
                          + ", ".join(f"`{alias}`" for alias in ALIASES)
                          + " are aliases of the classes, as in Keras.",
     ["get", "serialize", "deserialize", "register_constraint", "registered_constraints", *ALIASES]),
    ("Attaching to networks", "([layers.md](layers.md))",
     ["attach", "constrain", "register_layout", "apply_constraints", "nn", "rnn"]),
    ("Saving and loading", "([layers.md](layers.md#saving-and-loading-constraints-with-a-model))",
     ["constraints_config", "constrain_from_config", "export", "imports", "load_parameters"]),
    ("Coming from Keras", "([layers.md](layers.md#coming-from-keras))",
     ["from_keras", "from_keras_layer"]),
    ("Training", "([training.md](training.md), [distributed.md](distributed.md))",
     ["ConstrainedTrainer", "enforce", "verify_constraints", "ConstrainedOptimizer",
      "ConstraintHandler", "penalty", "WeightAverage"]),
    ("Monitoring", "([training.md](training.md#monitoring))",
     ["CSVWriter", "TensorBoardWriter"]),
    ("Certification", "What the constraints guarantee: a network's Lipschitz bound and the robustness it "
                      "certifies ([certification.md](certification.md)).",
     ["lipschitz_bound", "register_lipschitz", "certified_radius", "certified_accuracy", "conv_operator_norm"]),
    ("Constraint reports", "Each constrained parameter against its constraint, for model cards "
                           "([certification.md](certification.md#a-constraint-report-for-model-cards)).",
     ["report", "ConstraintReport"]),
    ("Errors and warnings", inspect.getdoc(errors).split("\n\n")[0], list(errors.__all__)),
]
# The Constraint contract: what a family overrides, then what every constraint does alike.
CONSTRAINT_METHODS = ["project", "continue_from", "check_shape", "get_config", "__call__", "apply_to",
                      "apply_with_state", "reduction_for", "validate", "uses_layer_layout", "from_config"]


def render():
    """The text of docs/api.md."""
    lines = ["# API reference", "",
             f"gluon-constraints {gc.__version__}. "
             "`import gluon_constraints as gc`. Generated from the docstrings by "
             "`python docs/api_reference.py`; a test checks that it is current.", ""]
    for title, note, names in SECTIONS:
        lines += [f"## {title}", "", note, ""]
        for name in names:
            lines += _entry(name)
    lines += ["## Command line", ""]
    for module in ("gluon_constraints.__main__", "gluon_constraints.distributed.launch"):
        __import__(module)
        lines += [f"### `python -m {module.replace('.__main__', '').replace('.distributed', '')}`", "",
                  "```text", inspect.getdoc(sys.modules[module]), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _entry(name):
    obj = getattr(gc, name)
    if name in ALIASES:
        return [f"### `gc.{name}`", "", f"An alias of `gc.{obj.__name__}`.", ""]
    if inspect.ismodule(obj):
        wrapped = [n for n in obj.__all__ if getattr(getattr(obj, n), "constraint_groups", None)]
        return [f"### `gc.{name}`", "", inspect.getdoc(obj).split("\n\n")[0], "",
                "Classes with constraint keywords: " + ", ".join(f"`{n}`" for n in wrapped) + ".", ""]
    lines = [f"### `gc.{name}{_signature(obj)}`", "", "```text", inspect.getdoc(obj) or "", "```", ""]
    if obj is gc.Constraint:
        for method in CONSTRAINT_METHODS:
            member = inspect.getattr_static(obj, method)
            function = member.__func__ if isinstance(member, classmethod) else member
            lines += [f"#### `{method}{_signature(function)}`", "", "```text",
                      inspect.getdoc(function) or "", "```", ""]
    return lines


def _signature(obj):
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return ""
    plain = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=plain, return_annotation=inspect.Signature.empty))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != text:
            print("docs/api.md is out of date: run python docs/api_reference.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
