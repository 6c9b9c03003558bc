"""``python -m gluon_constraints info``, ``build-kernel`` and ``report``.

``info`` reports the installed MXNet build, which path projections take (the fused kernel or
stock operators) and why, the kernel's cache directory and the C++ compiler. ``build-kernel``
builds and loads the fused kernel now, for Docker images and clusters, instead of at the first
training step; it exits 1, saying why, when the kernel cannot be built or loaded. ``report
model-symbol.json model-0000.params`` prints the constraint report (``gc.report``) of a model
exported with ``gc.export`` (``--json`` for JSON; ``--input-names`` if its input is not
``data``); it exits 1, saying why, when the model cannot be loaded.
(``python -m gluon_constraints.launch`` runs a local parameter-server job.)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
from typing import Any, List, Optional, Sequence

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m gluon_constraints",
                                     description="gluon-constraints tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="report the MXNet build and the projection path in use")
    commands.add_parser("build-kernel", help="build the fused kernel now (cached for this machine)")
    reporting = commands.add_parser("report", help="print the constraint report of an exported model")
    reporting.add_argument("symbol_file", help="the model's -symbol.json file (its -constraints.json beside it)")
    reporting.add_argument("param_file", help="the model's .params file")
    reporting.add_argument("--input-names", nargs="+", default=["data"], help="the model's inputs (default: data)")
    reporting.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args(argv)
    if args.command == "info":
        print("\n".join(_info()))
        return 0
    if args.command == "report":
        return _report(args)
    return _build_kernel()


def _report(args: argparse.Namespace) -> int:
    import warnings

    import gluon_constraints as gc

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MXNet's note on unknown parameter types
            net = gc.imports(args.symbol_file, args.input_names, args.param_file)
    except (OSError, ValueError, RuntimeError) as error:  # RuntimeError: MXNetError
        print(f"python -m gluon_constraints report: cannot load the model: {error}", file=sys.stderr)
        return 1
    result = gc.report(net)
    print(result.json(indent=2) if args.json else result.markdown(), end="" if not args.json else "\n")
    return 0


def _info() -> List[str]:
    import mxnet
    from mxnet import gluon  # noqa: F401 - a complete import, as in training

    import gluon_constraints
    from gluon_constraints.kernels import library

    features = mxnet.runtime.Features()
    enabled = ", ".join(f"{name} {'yes' if features.is_enabled(name) else 'no'}"
                        for name in ("CUDA", "CUDNN", "MKLDNN"))
    distributions = importlib.metadata.packages_distributions().get("mxnet", ["unknown"])
    state = library.status()
    return [
        f"gluon-constraints {gluon_constraints.__version__}",
        f"MXNet {mxnet.__version__} ({', '.join(distributions)}; {enabled})",
        f"projections: {_path(state)} ({state.reason})",
        f"kernel cache: {state.cache if state.cache is not None else '(unusable)'}",
        f"kernel library: {state.library if state.library is not None else '(none yet)'}",
        f"compiler: {_compiler_version(state.compiler)}",
    ]


def _path(state: Any) -> str:
    """The path projections take, as ``info`` names it: "fused kernel: prebuilt for <level>"
    (the wheel's library), "fused kernel" (built for this machine) or "stock MXNet operators"."""
    if state.path != "fused":
        return "stock MXNet operators"
    return f"fused kernel: prebuilt for {state.prebuilt}" if state.prebuilt else "fused kernel"


def _compiler_version(compiler: Optional[str]) -> str:
    if compiler is None:
        return "(none found; set CXX)"
    try:
        first = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                               timeout=30).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        first = []
    return f"{compiler} ({first[0]})" if first else compiler


def _build_kernel() -> int:
    from mxnet import gluon  # noqa: F401 - the kernel loads only into a complete mxnet

    from gluon_constraints.kernels import library

    path, failure = library.prepared_library(build=True)
    if path is None:
        print(f"gluon-constraints: the fused kernel cannot be built: {failure}", file=sys.stderr)
        return 1
    if library.kernel() is None:
        print(f"gluon-constraints: the fused kernel was built but cannot be loaded: "
              f"{library.status().reason}", file=sys.stderr)
        return 1
    print(f"gluon-constraints: fused kernel ready: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
