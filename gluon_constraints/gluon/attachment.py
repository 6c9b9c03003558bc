"""Attaching constraints to Gluon parameters: the only module that reads or writes them.

A parameter's constraint is the attribute ``param.constraint`` (a :class:`Constraint` or None),
as on a Keras variable. Everything else this package keeps on a parameter is one record,
:class:`ParameterState`, under ``param._gluon_constraints``: the owning layer, because the
per-output-unit axes of a weight depend on the layer type (a transposed convolution is not a
convolution), not on the parameter's name; the layout recorded for a parameter no layer owns;
and the checked projection ``apply_constraints`` keeps. ``copy.deepcopy`` and pickling copy the
constraint and the record with the network (the copy's owner is the copied layer), less the
checked projection, which belongs to the original's arrays.

The one method replaced on an instance: a parameter's ``_init_impl``, where MXNet allocates it
(see :func:`gluon_constraints._mxnet_compat.check_before_allocation`).
"""

from __future__ import annotations

import math
import re
import warnings
import weakref
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

from mxnet.gluon.block import Block, SymbolBlock
from mxnet.gluon.parameter import Parameter

from .. import _mxnet_compat as compat
from ..catalogue import Constraint, Reduction, get
from ..catalogue.compose import Compose
from ..catalogue.base import check_dtype
from ..errors import (AmbiguousLayoutWarning, ConstraintArgumentError, ConstraintConfigError, ConstraintShapeError,
                      ConstraintTypeError)
from .layouts import fan_in

__all__ = ["attach", "constrain", "constraint_of", "owner_of", "layout_of", "reduction_of", "owned_parameters",
           "attached_parameters", "check_parameter", "ParameterState", "state_of", "STATE"]

#: The one attribute this package sets on a parameter besides ``constraint``.
STATE = "_gluon_constraints"
# Every parameter a constraint was ever attached to, while it is alive: lets trainers warn about
# constrained parameters that no trainer updates.
_ATTACHED: "weakref.WeakSet[Parameter]" = weakref.WeakSet()
# The constraint each parameter was last warned about (AmbiguousLayoutWarning), to warn once.
_WARNED_LAYOUT: "weakref.WeakKeyDictionary[Parameter, Constraint]" = weakref.WeakKeyDictionary()

Owner = Optional[Tuple[Block, str]]


class ParameterState:
    """What this package keeps on a parameter, under ``param._gluon_constraints``.

    Attributes
    ----------
    owner : (Block, str) or None
        The owning layer and the parameter's attribute name on it, when known.
    layout : Reduction or None
        The per-output-unit reduction recorded for a parameter no layer owns
        (``attach(..., layout=...)``).
    checked : object or None
        ``apply_constraints``' checked projection of these very device copies; not copied or
        pickled with the parameter, and dropped whenever MXNet (re)allocates it.
    """

    __slots__ = ("owner", "layout", "checked")

    def __init__(self, owner: Owner = None, layout: Optional[Reduction] = None) -> None:
        self.owner, self.layout = owner, layout
        self.checked: Any = None  # training.apply's CheckedProjection, or None

    def __getstate__(self) -> Tuple[Owner, Optional[Reduction]]:
        return self.owner, self.layout

    def __setstate__(self, state: Tuple[Owner, Optional[Reduction]]) -> None:
        self.owner, self.layout = state
        self.checked = None


def state_of(param: Parameter) -> ParameterState:
    """``param``'s :class:`ParameterState` (an empty one, set on it, the first time)."""
    state = param.__dict__.get(STATE)
    if state is None:
        state = param.__dict__[STATE] = ParameterState()
    return state


def attach(param: Parameter, constraint: Any, layer: Optional[Block] = None,
           layout: Optional[Reduction] = None) -> Optional[Constraint]:
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
    layout : Reduction or None, default None
        For a parameter no layer owns (a network loaded with ``SymbolBlock.imports``): its
        per-output-unit reduction, as :func:`gluon_constraints.constraints_config` records it
        from the layer it had. None keeps a previously recorded layout. Giving a ``layer``
        drops it.

    Returns
    -------
    Constraint or None
        The constraint now attached.

    Raises
    ------
    ConstraintTypeError
        If ``param`` is not a Parameter, ``constraint`` is not a constraint, ``layout`` is not
        a Reduction, both ``layer`` and ``layout`` are given, or the parameter's dtype is not
        floating point.
    ConstraintShapeError
        If an explicit axis or the layout does not fit the known shape. Nothing is attached
        when anything fails.
    """
    if not isinstance(param, Parameter):
        raise ConstraintTypeError(
            f"attach expects an mxnet.gluon.Parameter: got {param!r} of type {type(param).__name__}. "
            f"Pass a parameter such as net[0].weight, or use gc.constrain(net, rules) by name.")
    if layout is not None and (layer is not None or not isinstance(layout, Reduction)):
        raise ConstraintTypeError(f"attach layout= expects a gluon_constraints.Reduction for a parameter no "
                        f"layer owns (and no layer=): got layout={layout!r}, layer={layer!r} for "
                        f"parameter '{param.name}'.")
    resolved = get(constraint)
    owner = _owner_entry(param, layer) if layer is not None else owner_of(param)
    if layer is None and layout is None:
        layout = layout_of(param)
    if resolved is not None:
        shape = compat.data_shape(param)
        check_parameter(param, resolved, shape, owner, layout)
    param.constraint = resolved
    state = state_of(param)
    state.owner, state.layout = owner, layout
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
    ConstraintTypeError
        If ``rules`` is not a mapping.
    ConstraintConfigError
        If a rule's key is not a valid regular expression or matches no parameter (the message
        lists the parameter names).
    ConstraintShapeError
        If an axis does not fit a parameter's shape. Nothing is attached when anything fails.
    """
    if not isinstance(block, Block):
        raise ConstraintTypeError(
            f"constrain expects an mxnet.gluon.Block (a network or layer): got {block!r} of type "
            f"{type(block).__name__}. For one parameter use gc.attach(param, constraint).")
    if not isinstance(rules, Mapping):
        raise ConstraintTypeError(
            f"constrain rules must be a dict mapping regular expressions (searched in parameter "
            f"names) to constraints, e.g. {{r'weight$': gc.MaxNorm(3)}}: got {type(rules).__name__} "
            f"{rules!r}.")
    owned = owned_parameters(block)
    chosen: Dict[str, List[Constraint]] = {}
    where: Dict[str, Tuple[Parameter, Owner]] = {}
    for pattern, spec in rules.items():
        regex = _rule_pattern(pattern)
        constraint = get(spec)
        if constraint is None:
            raise ConstraintTypeError(
                f"constrain rule {pattern!r} maps to None: each rule needs a constraint (anything "
                f"gc.get accepts, e.g. gc.MaxNorm(3)). Leave the rule out to leave its parameters alone.")
        matched = [(p, o) for p, o in owned
                   if regex.search(p.name) and (layers is None or (o and isinstance(o[0], layers)))]
        if not matched:
            scope = "" if layers is None else f" owned by {_type_names(layers)}"
            candidates = [p.name for p, o in owned
                          if layers is None or (o and isinstance(o[0], layers))]
            raise ConstraintConfigError(
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


def _rule_pattern(pattern: Any) -> "re.Pattern[str]":
    """A ``constrain`` rule's key compiled, or a ConstraintConfigError naming it."""
    if not isinstance(pattern, str):
        raise ConstraintConfigError(
            f"constrain rule {pattern!r} must be a string, a regular expression searched in "
            f"parameter names (r'conv\\d+_weight$'): got {type(pattern).__name__}.")
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ConstraintConfigError(
            f"constrain rule {pattern!r} is not a valid regular expression ({error}): rules are "
            f"Python regular expressions searched in parameter names, e.g. r'conv\\d+_weight$'; "
            f"escape literal characters with re.escape.") from None


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
    ConstraintTypeError
        If ``param.constraint`` was set by hand to something that is not a Constraint.
    """
    constraint = getattr(param, "constraint", None)
    if constraint is not None and not isinstance(constraint, Constraint):
        raise ConstraintTypeError(
            f"Parameter '{param.name}' has constraint {constraint!r}, which is not a "
            f"gluon_constraints.Constraint: attach it with gc.attach(param, {constraint!r}), "
            f"which accepts names, dicts and lists.")
    return constraint


def owner_of(param: Parameter) -> Owner:
    """``(owning block, attribute name)`` recorded when the constraint was attached, or None."""
    state = param.__dict__.get(STATE)
    return None if state is None else state.owner


def layout_of(param: Parameter) -> Optional[Reduction]:
    """The per-output-unit reduction recorded for a parameter no layer owns (``attach(...,
    layout=...)``), or None."""
    state = param.__dict__.get(STATE)
    return None if state is None else state.layout


def reduction_of(param: Parameter, shape: Optional[Sequence[int]] = None) -> Reduction:
    """The per-output-unit reduction of ``param`` (from its owning layer, else its recorded
    layout) for a known shape.

    Parameters
    ----------
    param : Parameter
        The parameter.
    shape : sequence of int or None, default None
        The shape to resolve for; None means the parameter's shape (from its data if the
        declared shape is unknown, as after ``SymbolBlock.imports``).
    """
    resolved = compat.data_shape(param) if shape is None else tuple(shape)
    if resolved is None:
        raise ConstraintShapeError(
            f"The per-unit axes of parameter {param.name!r} cannot be resolved: its shape {param.shape} is "
            f"not fully known and it has no data yet. Initialize it (or run a forward pass) first.")
    return _per_unit(owner_of(param), layout_of(param), resolved)


def _per_unit(owner: Owner, layout: Optional[Reduction], shape: Tuple[int, ...]) -> Reduction:
    """The owning layer's fan-in, else the recorded layout, else the bare-array default."""
    if owner is None and layout is not None:
        return layout
    block, attr = owner or (None, None)
    return fan_in(block, attr, shape)


def check_parameter(param: Parameter, constraint: Constraint, shape: Optional[Sequence[int]],
                    owner: Owner, layout: Optional[Reduction] = None) -> None:
    """Check that ``constraint`` can run on ``param``: its dtype, and its axes if ``shape`` is known.

    ``layout`` is the recorded reduction of a parameter no layer owns (None: the one recorded
    on ``param``, if any). Warns with :class:`~gluon_constraints.AmbiguousLayoutWarning` when
    the constraint uses per-unit axes, neither an owning layer nor a layout is known, and the
    weight has 3 or more dimensions (where a transposed convolution's output channels are not
    axis 0); once per parameter and constraint.

    Raises
    ------
    ConstraintTypeError
        If the parameter's dtype is not floating point.
    ConstraintShapeError
        If the constraint's axes or the layout do not fit ``shape``.
    """
    check_dtype(param.dtype, type(constraint).__name__, f"parameter '{param.name}'")
    if shape is None:
        return
    layout = layout if layout is not None else layout_of(param)
    if owner is None and layout is not None:
        _check_layout(param, layout, tuple(shape))
    constraint.validate(tuple(shape), _per_unit(owner, layout, tuple(shape)), name=param.name)
    if owner is None and layout is None and len(shape) >= 3 and constraint.uses_layer_layout() \
            and _WARNED_LAYOUT.get(param) is not constraint:
        _WARNED_LAYOUT[param] = constraint
        warnings.warn(
            f"Parameter '{param.name}' of shape {tuple(shape)} has constraint {constraint!r} per "
            f"output unit, but its layer is unknown, so its axes are taken as every axis but 0. "
            f"That is right for convolutions and wrong for transposed convolutions (output "
            f"channels on axis 1). Pass the layer: gc.attach(param, c, layer=block), or use "
            f"gc.constrain(net, ...) or the gluon_constraints.nn layers, or give an explicit "
            f"axis.", AmbiguousLayoutWarning, stacklevel=3)


def _check_layout(param: Parameter, layout: Reduction, shape: Tuple[int, ...]) -> None:
    """Refuse a recorded layout whose view or axes do not fit the parameter's shape."""
    viewed = layout.view_shape if layout.view_shape is not None else shape
    kernel = layout.kernel_axes or ()
    if math.prod(viewed) != math.prod(shape) or any(not 0 <= a < len(viewed) for a in layout.axes) \
            or any(not 0 <= a < len(shape) for a in kernel):
        raise ConstraintShapeError(
            f"The layout {layout!r} recorded for parameter '{param.name}' does not fit its shape "
            f"{shape}: the view must have the parameter's size and the axes must lie within it. "
            f"Record it from a parameter of this shape (gc.constraints_config).")


def _check_on_allocation(param: Parameter, shape: Tuple[int, ...]) -> None:
    """Run by MXNet's allocation of ``param`` (see ``compat.check_before_allocation``)."""
    state_of(param).checked = None
    constraint = constraint_of(param)
    if constraint is not None:
        check_parameter(param, constraint, shape, owner_of(param))


def _owner_entry(param: Parameter, layer: Block) -> Tuple[Block, str]:
    if not isinstance(layer, Block):
        raise ConstraintTypeError(
            f"attach layer= expects the mxnet.gluon.Block that owns parameter '{param.name}': got "
            f"{layer!r} of type {type(layer).__name__}.")
    own = compat.own_parameters(layer)
    for attr, candidate in own.items():
        if candidate is param:
            return layer, attr
    raise ConstraintArgumentError(
        f"Parameter '{param.name}' is not a parameter of layer {type(layer).__name__} "
        f"(its parameters: {', '.join(p.name for p in own.values()) or 'none'}): pass the layer "
        f"that registered it as layer=, or no layer.")


def _type_names(layers: Union[Type[Block], Tuple[Type[Block], ...]]) -> str:
    types = layers if isinstance(layers, tuple) else (layers,)
    return " or ".join(t.__name__ for t in types)
