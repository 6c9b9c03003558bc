"""Attaching constraints to Gluon parameters: the only module that reads or writes them.

A parameter's constraint is the attribute ``param.constraint`` (a :class:`Constraint` or None),
as on a Keras variable. Alongside it the owning layer is remembered, because the per-output-unit
axes of a weight depend on the layer type (a transposed convolution is not a convolution), not
on the parameter's name.
"""

from __future__ import annotations

import re
import weakref
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type, Union

from mxnet.gluon.block import Block
from mxnet.gluon.parameter import Parameter

from .constraints import Compose, Constraint
from .layouts import fan_in
from .reduction import Reduction
from .registry import get

__all__ = ["attach", "constrain", "constraint_of", "reduction_of", "owned_parameters",
           "attached_parameters"]

_OWNER = "_gluon_constraints_owner"
_HOOKED = "_gluon_constraints_validates_on_init"
# Every parameter a constraint was ever attached to, while it is alive: lets trainers warn about
# constrained parameters that no trainer updates.
_ATTACHED: "weakref.WeakSet[Parameter]" = weakref.WeakSet()


def attach(param: Parameter, constraint: Any, layer: Optional[Block] = None) -> Optional[Constraint]:
    """Set ``param.constraint``, validating it against the parameter's shape.

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
        uses the bare-array default (every axis but 0).

    Returns
    -------
    Constraint or None
        The constraint now attached.

    Raises
    ------
    TypeError
        If ``param`` is not a Parameter or ``constraint`` is not a constraint.
    ConstraintShapeError
        If an explicit axis does not fit the known shape; nothing is attached then.
    """
    if not isinstance(param, Parameter):
        raise TypeError(f"attach expects an mxnet.gluon.Parameter: got {param!r}.")
    resolved = get(constraint)
    owner = _owner_entry(param, layer) if layer is not None else getattr(param, _OWNER, None)
    if resolved is not None and _shape_known(param.shape):
        _validate(param, resolved, param.shape, owner)
    param.constraint = resolved
    setattr(param, _OWNER, owner)
    if resolved is not None:
        _validate_when_allocated(param)
        _ATTACHED.add(param)
    return resolved


def constrain(block: Block, rules: Mapping[str, Any],
              layers: Union[None, Type[Block], Tuple[Type[Block], ...]] = None) -> Dict[str, Constraint]:
    """Attach constraints to an existing network by parameter name.

    Parameters
    ----------
    block : Block
        The network. Its block tree is walked so that each parameter's owning layer (and so its
        fan-in axes) is known.
    rules : mapping
        Regular expression (searched in each parameter's full name, as ``re.search``) to
        anything :func:`gluon_constraints.get` accepts. A parameter matched by several rules gets
        their constraints composed in the order of the rules.
    layers : type, tuple of types or None, default None
        Keep only parameters owned by blocks of these types (``nn.Conv2D`` matches only 2-D
        convolutions; ``nn.conv_layers._Conv`` every convolution).

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
    where: Dict[str, Tuple[Parameter, Block, str]] = {}
    for pattern, spec in rules.items():
        regex = re.compile(pattern)
        constraint = get(spec)
        matched = [(p, b, a) for p, b, a in owned
                   if regex.search(p.name) and (layers is None or isinstance(b, layers))]
        if not matched:
            scope = "" if layers is None else f" owned by {_type_names(layers)}"
            candidates = [p.name for p, b, _ in owned if layers is None or isinstance(b, layers)]
            raise ValueError(
                f"constrain rule {pattern!r} matched no parameter{scope}. "
                f"Parameter names: {', '.join(candidates) or '(none)'}.")
        for param, owner_block, attr in matched:
            chosen.setdefault(param.name, []).append(constraint)
            where[param.name] = (param, owner_block, attr)
    combined = {name: cs[0] if len(cs) == 1 else Compose(cs) for name, cs in chosen.items()}
    for name, constraint in combined.items():
        param, owner_block, attr = where[name]
        if _shape_known(param.shape):
            _validate(param, constraint, param.shape, (owner_block, attr))
    for name, constraint in combined.items():
        param, owner_block, _ = where[name]
        attach(param, constraint, layer=owner_block)
    return combined


def owned_parameters(block: Block) -> List[Tuple[Parameter, Block, str]]:
    """Every parameter of a block tree once, with the block that owns it and its attribute name.

    Parameters
    ----------
    block : Block
        Root of the tree. A parameter shared by several blocks is listed with the first owner
        found in depth-first order.
    """
    seen = set()
    found = []
    stack = [block]
    while stack:
        current = stack.pop()
        for attr, param in current._reg_params.items():
            if id(param) not in seen:
                seen.add(id(param))
                found.append((param, current, attr))
        stack.extend(reversed(list(current._children.values())))
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
            f"gluon_constraints.Constraint: attach it with gc.attach(param, ...).")
    return constraint


def reduction_of(param: Parameter, shape: Optional[Sequence[int]] = None) -> Reduction:
    """The per-output-unit reduction of ``param`` (from its owning layer) for a known shape.

    Parameters
    ----------
    param : Parameter
        The parameter.
    shape : sequence of int or None, default None
        The shape to resolve for; None means ``param.shape``.
    """
    block, attr = getattr(param, _OWNER, None) or (None, None)
    return fan_in(block, attr, tuple(param.shape if shape is None else shape))


def _owner_entry(param: Parameter, layer: Block) -> Tuple[Block, str]:
    if not isinstance(layer, Block):
        raise TypeError(f"attach layer= expects an mxnet.gluon.Block: got {layer!r}.")
    for attr, candidate in layer._reg_params.items():
        if candidate is param:
            return layer, attr
    raise ValueError(
        f"Parameter '{param.name}' is not a parameter of layer {type(layer).__name__} "
        f"(its parameters: {', '.join(p.name for p in layer._reg_params.values()) or 'none'}).")


def _validate(param: Parameter, constraint: Constraint, shape: Sequence[int],
              owner: Optional[Tuple[Block, str]]) -> None:
    block, attr = owner or (None, None)
    constraint.validate(tuple(shape), fan_in(block, attr, shape), name=param.name)


def _validate_when_allocated(param: Parameter) -> None:
    """Check the constraint again when MXNet allocates the parameter (deferred init included).

    Every allocation goes through ``Parameter._init_impl(data, ctx_list)``; the check runs before
    it, so a constraint that does not fit leaves the parameter unallocated.
    """
    if getattr(param, _HOOKED, False):
        return
    allocate = param._init_impl

    def _init_impl(data: Any, ctx_list: Iterable[Any]) -> None:
        constraint = constraint_of(param)
        if constraint is not None:
            _validate(param, constraint, data.shape, getattr(param, _OWNER, None))
        allocate(data, ctx_list)

    param._init_impl = _init_impl
    setattr(param, _HOOKED, True)


def _shape_known(shape: Optional[Sequence[int]]) -> bool:
    return shape is not None and len(shape) > 0 and all(d > 0 for d in shape)


def _type_names(layers: Union[Type[Block], Tuple[Type[Block], ...]]) -> str:
    types = layers if isinstance(layers, tuple) else (layers,)
    return " or ".join(t.__name__ for t in types)


