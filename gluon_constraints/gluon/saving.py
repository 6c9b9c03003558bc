"""Keeping constraints with a model: a JSON config of a network's constraints, written beside an
exported model and read back, and a check of loaded weights against their constraints.

Gluon saves weights (``save_parameters``, ``export``) but not the attributes set on parameters,
so constraints are lost with the model. :func:`constraints_config` records, for each constrained
parameter, its serialized constraint, its structural name (``"0.weight"``, as
``save_parameters`` names it), the type of its owning layer and the per-output-unit axes that
layer gives it; :func:`constrain_from_config` attaches them again, to a rebuilt network (matched
by full name, then by structural name) or to one loaded with ``SymbolBlock.imports`` (which has
no layers: each parameter gets the recorded layout, ``attach(..., layout=...)``, and the
constraint comes back as it was saved).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mxnet import gluon
from mxnet.gluon.block import Block

from .. import _mxnet_compat as compat
from ..catalogue import Constraint, Reduction, deserialize, serialize
from ..catalogue.feasibility import violation
from ..errors import ConstraintConfigError, ConstraintsFileNotFoundError, InfeasibleWeightsWarning
from .attachment import attach, check_parameter, constraint_of, owned_parameters, owner_of, reduction_of

__all__ = ["constraints_config", "constrain_from_config", "export", "imports", "load_parameters",
           "CONFIG_FORMAT"]

#: The ``"format"`` entry of a constraints config.
CONFIG_FORMAT = "gluon-constraints/constraints-1"
_SUFFIX = "-constraints.json"


def constraints_config(net: Block) -> Dict[str, Any]:
    """The constraints of a network as a JSON-serializable dict.

    Parameters
    ----------
    net : Block
        The network.

    Returns
    -------
    dict
        ``{"format": CONFIG_FORMAT, "parameters": {name: entry}}`` with one entry per constrained
        parameter: ``"constraint"`` (as :func:`gluon_constraints.serialize` writes it),
        ``"path"`` (the structural name, or None), ``"layer"`` (the owning layer's class name,
        or None) and, when the shape is known, ``"axes"``, ``"view_shape"`` and
        ``"kernel_axes"`` (the parameter's per-unit layout, from its layer).

    Examples
    --------
    >>> json.dumps(gc.constraints_config(net))  # doctest: +SKIP
    """
    paths = {id(param): path for path, param in compat.structural_parameters(net).items()}
    entries: Dict[str, Any] = {}
    for param, _ in owned_parameters(net):
        constraint = constraint_of(param)
        if constraint is None:
            continue
        owner = owner_of(param)
        entry: Dict[str, Any] = {"constraint": serialize(constraint), "path": paths.get(id(param)),
                                 "layer": type(owner[0]).__name__ if owner else None}
        if compat.data_shape(param) is not None:
            reduction = reduction_of(param)
            entry["axes"] = list(reduction.axes)
            entry["view_shape"] = list(reduction.view_shape) if reduction.view_shape else None
            entry["kernel_axes"] = list(reduction.kernel_axes) if reduction.kernel_axes else None
        entries[param.name] = entry
    return {"format": CONFIG_FORMAT, "parameters": entries}


def constrain_from_config(net: Block, config: Dict[str, Any]) -> Dict[str, Constraint]:
    """Attach the constraints recorded by :func:`constraints_config` to ``net``.

    Each entry is matched to a parameter by full name, else by structural name. A parameter
    whose layer is known gets that layer's layout (the layer type must be the recorded one); a
    parameter without a layer (a ``SymbolBlock``) gets the recorded layout
    (``attach(..., layout=...)``): either way every constraint projects as it did on the saved
    network. Everything is checked before anything is attached.

    Parameters
    ----------
    net : Block
        The network.
    config : dict
        The output of :func:`constraints_config` (read back from JSON).

    Returns
    -------
    dict
        The constraint attached to each matched parameter, by the parameter's name in ``net``.

    Raises
    ------
    ConstraintConfigError
        If ``config`` is not such a dict, or entries are malformed (not a dict, no
        ``"constraint"``, a constraint that cannot be built) or match no parameter or a
        parameter of another layer type; the message names every such entry and the accepted
        form. Nothing is attached then.
    """
    entries = _entries(config)
    owned = owned_parameters(net)
    by_name = {param.name: param for param, _ in owned}
    by_path = compat.structural_parameters(net)
    matched: List[Tuple[Any, Any, Optional[Reduction], Constraint]] = []
    problems: List[str] = []
    for name, entry in entries.items():
        param = by_name.get(name) or by_path.get(entry.get("path") or "")
        if param is None:
            problems.append(f"{name}: no parameter of that name or structural name "
                            f"{entry.get('path')!r}")
            continue
        owner = owner_of(param) or next((o for p, o in owned if p is param), None)
        try:
            constraint = deserialize(entry["constraint"])
        except (TypeError, ValueError) as error:
            problems.append(f"{name}: its constraint {entry['constraint']!r} cannot be built: {error}")
            continue
        if owner is not None and entry.get("layer") not in (None, type(owner[0]).__name__):
            problems.append(f"{name}: saved for a {entry['layer']}, found in a {type(owner[0]).__name__}")
            continue
        matched.append((param, owner, _recorded_layout(entry) if owner is None else None, constraint))
    if problems:
        raise ConstraintConfigError("constrain_from_config cannot attach these entries:\n" +
                         "\n".join(f"  {p}" for p in problems) +
                         f"\nParameter names: {', '.join(sorted(by_name))}.")
    for param, owner, layout, constraint in matched:
        check_parameter(param, constraint, compat.data_shape(param), owner, layout)
    for param, owner, layout, constraint in matched:
        attach(param, constraint, layer=owner[0] if owner else None, layout=layout)
    return {param.name: constraint for param, _, _, constraint in matched}


def export(net: Block, path: str, epoch: int = 0) -> str:
    """``net.export(path, epoch)`` and the network's constraints written beside the model.

    Parameters
    ----------
    net : HybridBlock
        A hybridized network that has run a forward pass (as ``HybridBlock.export`` needs).
    path : str
        The prefix: files ``path-symbol.json``, ``path-%04d.params`` and
        ``path-constraints.json`` are written.
    epoch : int, default 0
        The epoch number in the parameter file's name.

    Returns
    -------
    str
        The path of the constraints file.
    """
    net.export(path, epoch)
    target = f"{path}{_SUFFIX}"
    Path(target).write_text(json.dumps(constraints_config(net), indent=1, sort_keys=True))
    return target


def imports(symbol_file: str, input_names: Any, param_file: Optional[str] = None,
            ctx: Any = None, **kwargs: Any) -> gluon.SymbolBlock:
    """``gluon.SymbolBlock.imports`` with the constraints :func:`export` wrote beside the model.

    Parameters
    ----------
    symbol_file : str
        ``<prefix>-symbol.json``; the constraints are read from ``<prefix>-constraints.json``.
    input_names, param_file, ctx, **kwargs
        As for ``gluon.SymbolBlock.imports``.

    Returns
    -------
    gluon.SymbolBlock
        The network with its constraints attached (weights that violate them are warned about).

    Raises
    ------
    FileNotFoundError
        If there is no constraints file beside the symbol file.
    """
    prefix = symbol_file[: -len("-symbol.json")] if symbol_file.endswith("-symbol.json") \
        else os.path.splitext(symbol_file)[0]
    config_file = Path(f"{prefix}{_SUFFIX}")
    if not config_file.is_file():
        raise ConstraintsFileNotFoundError(
            f"No constraints file {str(config_file)!r} beside {symbol_file!r}: gc.imports reads "
            f"what gc.export wrote. For a model exported without constraints use "
            f"gluon.SymbolBlock.imports, then gc.constrain.")
    config = json.loads(config_file.read_text())
    net = gluon.SymbolBlock.imports(symbol_file, input_names, param_file, ctx, **kwargs)
    attached = constrain_from_config(net, config)
    _warn_infeasible([p for p in net.collect_params().values() if p.name in attached])
    return net


def load_parameters(net: Block, filename: str, **kwargs: Any) -> None:
    """``net.load_parameters(filename, ...)``, then warn about loaded weights that violate
    their constraints.

    An old checkpoint, or one saved before constraints were added, can hold weights outside
    their sets; training projects them at the first step, and ``gc.apply_constraints(net)``
    projects them now. Reading the weights synchronises with the host (once, at load time).

    Parameters
    ----------
    net : Block
        The network.
    filename : str
        The parameter file.
    **kwargs
        As for ``Block.load_parameters`` (``ctx``, ``allow_missing``, ...).
    """
    net.load_parameters(filename, **kwargs)
    _warn_infeasible([p for p in net.collect_params().values()])


_ENTRY_FORM = ("{'constraint': {'class_name': ..., 'config': {...}}, 'path': ..., 'layer': ...} "
               "(as gc.constraints_config writes it)")


def _entries(config: Any) -> Dict[str, Any]:
    """The config's entries by parameter name, each checked to be a dict with a constraint."""
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT \
            or not isinstance(config.get("parameters"), dict):
        raise ConstraintConfigError(
            f"Expected a constraints config ({{'format': {CONFIG_FORMAT!r}, 'parameters': "
            f"{{name: entry}}}}, as gc.constraints_config writes): got {str(config)[:200]}.")
    malformed = [f"  {name}: got {entry!r}" for name, entry in config["parameters"].items()
                 if not isinstance(entry, dict) or not isinstance(entry.get("constraint"), dict)]
    if malformed:
        raise ConstraintConfigError(
            "These constraints config entries are not of the form " + _ENTRY_FORM + ":\n" +
            "\n".join(malformed))
    return config["parameters"]


def _recorded_layout(entry: Dict[str, Any]) -> Optional[Reduction]:
    """The reduction an entry recorded (:func:`constraints_config`), or None if it has none."""
    if entry.get("axes") is None:
        return None
    view, kernel = entry.get("view_shape"), entry.get("kernel_axes")
    return Reduction(tuple(entry["axes"]), tuple(view) if view else None,
                     tuple(kernel) if kernel else None)


def _warn_infeasible(params: Sequence[Any]) -> None:
    found = []
    for param in params:
        constraint = constraint_of(param)
        if constraint is None or not compat.is_allocated(param):
            continue
        problem = violation(constraint, param.list_data()[0].as_nd_ndarray(), reduction_of(param))
        if problem is not None:
            found.append(f"{param.name} ({problem})")
    if found:
        warnings.warn(
            f"These loaded weights violate their constraints: {'; '.join(found)}. Training "
            f"projects them at its first step; gc.apply_constraints(net) projects them now.",
            InfeasibleWeightsWarning, stacklevel=3)
