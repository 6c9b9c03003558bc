"""Attaching constraints to Gluon parameters: the only module that reads or writes them.

A parameter's constraint is the attribute ``param.constraint`` (a :class:`Constraint` or None),
as on a Keras variable. Alongside it the owning layer is remembered, because the per-output-unit
axes of a weight depend on the layer type (a transposed convolution is not a convolution), not
on the parameter's name. Both are plain attributes of the parameter, so ``copy.deepcopy`` of a
network copies them with it (the copy's owner is the copied layer).
"""

from __future__ import annotations

import re
import warnings
import weakref
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

from mxnet.gluon.block import Block, SymbolBlock
from mxnet.gluon.parameter import Parameter

from .. import _mxnet_compat as compat
from ..catalogue import Compose, Constraint, Reduction, get
from ..catalogue.base import check_dtype
from ..errors import AmbiguousLayoutWarning
from .layouts import fan_in

__all__ = ["attach", "constrain", "constraint_of", "owner_of", "reduction_of", "owned_parameters",
           "attached_parameters", "check_parameter", "PLAN_ATTRIBUTE"]

_OWNER = "_gluon_constraints_owner"
#: Where ``apply_constraints`` keeps a parameter's checked projection plan; dropped whenever
#: MXNet (re)allocates the parameter (``initialize``, ``reset_ctx``, loading), so the plan does
#: not hold on to released device copies (after ``cast``, only until the next call).
PLAN_ATTRIBUTE = "_gluon_constraints_projection_plan"
# Every parameter a constraint was ever attached to, while it is alive: lets trainers warn about
# constrained parameters that no trainer updates.
_ATTACHED: "weakref.WeakSet[Parameter]" = weakref.WeakSet()
# The constraint each parameter was last warned about (AmbiguousLayoutWarning), to warn once.
_WARNED_LAYOUT: "weakref.WeakKeyDictionary[Parameter, Constraint]" = weakref.WeakKeyDictionary()

Owner = Optional[Tuple[Block, str]]


def attach(param: Parameter, constraint: Any, layer: Optional[Block] = None) -> Optional[Constraint]:
    """Set ``param.constraint``, validating it against the parameter's dtype and shape.

    Attaching again replaces the previous constraint; attaching None removes it. The check runs
    at once if the shape is known, otherwise when deferred initialization allocates the
    parameter (before any value is written).

    Parameters
    ----------
    param : mxnet.gluon.Parameter
        The parameter.
    constraint : Constraint, str, dict, list, tuple or None
        Anything :func:`gluon_constraints.get` accepts; a list or tuple is composed left to right.
    layer : Block or None, default None
        The block that owns ``param``; its type decides the per-output-unit axes (see
        :func:`gluon_constraints.register_layout`). None keeps a previously recorded owner, or
        uses the bare-array default (every axis but 0): then a per-unit constraint on a weight
        of 3 or more dimensions gets an :class:`~gluon_constraints.AmbiguousLayoutWarning`,
        because for a transposed convolution that default reduces over the output channels.

    Returns
    -------
    Constraint or None
        The constraint now attached.

    Raises
    ------
    TypeError
        If ``param`` is not a Parameter or ``constraint`` is not a constraint.
    ConstraintTypeError
        If the parameter's dtype is not floating point.
    ConstraintShapeError
        If an explicit axis does not fit the known shape. Nothing is attached when anything fails.
    """
    if not isinstance(param, Parameter):
        raise TypeError(f"attach expects an mxnet.gluon.Parameter: got {param!r}.")
    resolved = get(constraint)
    owner = _owner_entry(param, layer) if layer is not None else owner_of(param)
    if resolved is not None:
        shape = compat.data_shape(param)
        check_parameter(param, resolved, shape, owner)
    param.constraint = resolved
    setattr(param, _OWNER, owner)
    if resolved is not None:
        compat.check_before_allocation(param, _check_on_allocation)
        _ATTACHED.add(param)
    return resolved


def constrain(block: Block, rules: Mapping[str, Any],
              layers: Union[None, Type[Block], Tuple[Type[Block], ...]] = None) -> Dict[str, Constraint]:
    """Attach constraints to an existing network by parameter name.

    Parameters
    ----------
    block : Block
        The network. Its block tree is walked so that each parameter's owning layer (and so its
        fan-in axes) is known. Parameters no layer registered itself (those of a network loaded
        with ``SymbolBlock.imports``) use the bare-array default axes.
    rules : mapping
        Regular expression (searched in each parameter's full name, as ``re.search``) to
        anything :func:`gluon_constraints.get` accepts. A parameter matched by several rules gets
        their constraints composed in the order of the rules.
    layers : type, tuple of types or None, default None
        Keep only parameters owned by blocks of these types (``nn.Conv2D`` matches only 2-D
        convolutions).

    Returns
    -------
    dict
        ``{parameter name: constraint attached}``.

    Raises
    ------
    ValueError
        If a rule matches no parameter (the message lists the parameter names), or an axis does
        not fit a parameter's shape. Nothing is attached when anything fails.
    """
    if not isinstance(block, Block):
        raise TypeError(f"constrain expects an mxnet.gluon.Block: got {block!r}.")
    owned = owned_parameters(block)
    chosen: Dict[str, List[Constraint]] = {}
    where: Dict[str, Tuple[Parameter, Owner]] = {}
    for pattern, spec in rules.items():
        regex = re.compile(pattern)
        constraint = get(spec)
        matched = [(p, o) for p, o in owned
                   if regex.search(p.name) and (layers is None or (o and isinstance(o[0], layers)))]
        if not matched:
            scope = "" if layers is None else f" owned by {_type_names(layers)}"
            candidates = [p.name for p, o in owned
                          if layers is None or (o and isinstance(o[0], layers))]
            raise ValueError(
                f"constrain rule {pattern!r} matched no parameter{scope}. "
                f"Parameter names: {', '.join(candidates) or '(none)'}.")
        for param, owner in matched:
            chosen.setdefault(param.name, []).append(constraint)
            where[param.name] = (param, owner)
    combined = {name: cs[0] if len(cs) == 1 else Compose(cs) for name, cs in chosen.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AmbiguousLayoutWarning)  # checked, then warned once below
        for name, constraint in combined.items():
            param, owner = where[name]
            check_parameter(param, constraint, compat.data_shape(param), owner)
    for name, constraint in combined.items():
        param, owner = where[name]
        if owner is None:
            attach(param, constraint)
        else:
            attach(param, constraint, layer=owner[0])
    return combined


def owned_parameters(block: Block) -> List[Tuple[Parameter, Owner]]:
    """Every parameter of a block tree once, with ``(owning block, attribute name)`` or None.

    Parameters
    ----------
    block : Block
        Root of the tree. A parameter shared by several blocks is listed with the first owner
        found; parameters that no layer registered as its own (those of a ``SymbolBlock``) have
        owner None.
    """
    blocks: List[Block] = []
    block.apply(blocks.append)
    seen = set()
    found: List[Tuple[Parameter, Owner]] = []
    for current in blocks:
        if isinstance(current, SymbolBlock):  # registers what it loaded, but is no layer
            continue
        for attr, param in compat.own_parameters(current).items():
            if id(param) not in seen:
                seen.add(id(param))
                found.append((param, (current, attr)))
    for param in block.collect_params().values():
        if id(param) not in seen:
            seen.add(id(param))
            found.append((param, None))
    return found


def attached_parameters() -> List[Parameter]:
    """Live parameters that currently have a constraint attached with :func:`attach`."""
    return [p for p in list(_ATTACHED) if getattr(p, "constraint", None) is not None]


def constraint_of(param: Parameter) -> Optional[Constraint]:
    """The constraint attached to ``param``, or None.

    Raises
    ------
    TypeError
        If ``param.constraint`` was set by hand to something that is not a Constraint.
    """
    constraint = getattr(param, "constraint", None)
    if constraint is not None and not isinstance(constraint, Constraint):
        raise TypeError(
            f"Parameter '{param.name}' has constraint {constraint!r}, which is not a "
            f"gluon_constraints.Constraint: attach it with gc.attach(param, {constraint!r}), "
            f"which accepts names, dicts and lists.")
    return constraint


def owner_of(param: Parameter) -> Owner:
    """``(owning block, attribute name)`` recorded when the constraint was attached, or None."""
    return getattr(param, _OWNER, None)


def reduction_of(param: Parameter, shape: Optional[Sequence[int]] = None) -> Reduction:
    """The per-output-unit reduction of ``param`` (from its owning layer) for a known shape.

    Parameters
    ----------
    param : Parameter
        The parameter.
    shape : sequence of int or None, default None
        The shape to resolve for; None means the parameter's shape (from its data if the
        declared shape is unknown, as after ``SymbolBlock.imports``).
    """
    block, attr = owner_of(param) or (None, None)
    return fan_in(block, attr, tuple(compat.data_shape(param) if shape is None else shape))


def check_parameter(param: Parameter, constraint: Constraint, shape: Optional[Sequence[int]],
                    owner: Owner) -> None:
    """Check that ``constraint`` can run on ``param``: its dtype, and its axes if ``shape`` is known.

    Warns with :class:`~gluon_constraints.AmbiguousLayoutWarning` when the constraint uses
    per-unit axes, no owning layer is known, and the weight has 3 or more dimensions (where a
    transposed convolution's output channels are not axis 0); once per parameter and constraint.

    Raises
    ------
    ConstraintTypeError
        If the parameter's dtype is not floating point.
    ConstraintShapeError
        If the constraint's axes do not fit ``shape``.
    """
    check_dtype(param.dtype, type(constraint).__name__, f"parameter '{param.name}'")
    if shape is None:
        return
    block, attr = owner or (None, None)
    constraint.validate(tuple(shape), fan_in(block, attr, shape), name=param.name)
    if owner is None and len(shape) >= 3 and constraint.uses_layer_layout() \
            and _WARNED_LAYOUT.get(param) is not constraint:
        _WARNED_LAYOUT[param] = constraint
        warnings.warn(
            f"Parameter '{param.name}' of shape {tuple(shape)} has constraint {constraint!r} per "
            f"output unit, but its layer is unknown, so its axes are taken as every axis but 0. "
            f"That is right for convolutions and wrong for transposed convolutions (output "
            f"channels on axis 1). Pass the layer: gc.attach(param, c, layer=block), or use "
            f"gc.constrain(net, ...) or the gluon_constraints.nn layers, or give an explicit "
            f"axis.", AmbiguousLayoutWarning, stacklevel=3)


def _check_on_allocation(param: Parameter, shape: Tuple[int, ...]) -> None:
    """Run by MXNet's allocation of ``param`` (see ``compat.check_before_allocation``)."""
    param.__dict__.pop(PLAN_ATTRIBUTE, None)
    constraint = constraint_of(param)
    if constraint is not None:
        check_parameter(param, constraint, shape, owner_of(param))


def _owner_entry(param: Parameter, layer: Block) -> Tuple[Block, str]:
    if not isinstance(layer, Block):
        raise TypeError(f"attach layer= expects an mxnet.gluon.Block: got {layer!r}.")
    own = compat.own_parameters(layer)
    for attr, candidate in own.items():
        if candidate is param:
            return layer, attr
    raise ValueError(
        f"Parameter '{param.name}' is not a parameter of layer {type(layer).__name__} "
        f"(its parameters: {', '.join(p.name for p in own.values()) or 'none'}).")


def _type_names(layers: Union[Type[Block], Tuple[Type[Block], ...]]) -> str:
    types = layers if isinstance(layers, tuple) else (layers,)
    return " or ".join(t.__name__ for t in types)
