"""Fan-in axes per layer type: which entries of a weight feed one output unit.

A norm constraint with ``axis=None`` bounds each output unit's incoming weights. Which axes those
are depends on the layer that owns the weight, not on the weight's name or rank: a Dense weight
``(units, in)`` reduces axis 1, a convolution weight all axes but 0, a transposed convolution
(whose weight is ``(in, out/groups, *kernel)``) all axes but the output-channel axis, within
each group. This module holds that table and lets custom blocks add to it.
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

from mxnet.gluon import nn, rnn
from mxnet.gluon.block import Block

from .. import _mxnet_compat as compat
from ..catalogue.reduction import Reduction, normalize_axes, per_output_unit
from ..errors import ConstraintTypeError

__all__ = ["LayoutRule", "register_layout", "fan_in"]

#: A layout rule: reduction axes, or a function ``(block, shape) -> Reduction or axes``.
LayoutRule = Union[int, Tuple[int, ...], Callable[[Block, Tuple[int, ...]], Union[Reduction, int, Tuple[int, ...]]]]

_RULES: Dict[type, Dict[str, LayoutRule]] = {}


def register_layout(block_class: type, rules: Mapping[str, LayoutRule]) -> None:
    """Declare the fan-in (per-output-unit reduction) of a block class's parameters.

    Parameters
    ----------
    block_class : type
        A subclass of ``mxnet.gluon.Block``. Subclasses of it inherit the rules unless they
        register their own.
    rules : mapping
        Attribute name of the parameter on the block (``"weight"``; shell-style patterns such as
        ``"*_i2h_weight"`` match several) to either reduction axes (an int or tuple of ints, in
        the weight's own layout) or a function ``fn(block, shape)`` returning axes or a
        :class:`~gluon_constraints.Reduction`.

    Raises
    ------
    ConstraintTypeError
        If ``block_class`` is not a Block subclass or a rule is neither axes nor callable.

    Examples
    --------
    >>> gc.register_layout(MyBilinear, {"weight": (1, 2)})  # doctest: +SKIP
    """
    if not (isinstance(block_class, type) and issubclass(block_class, Block)):
        raise ConstraintTypeError(
            f"register_layout expects a subclass of mxnet.gluon.Block: got {block_class!r}. Pass "
            f"the class (MyBlock), not an instance.")
    checked: Dict[str, LayoutRule] = {}
    for name, rule in dict(rules).items():
        if not (callable(rule) or isinstance(rule, int) or
                (isinstance(rule, tuple) and all(isinstance(a, int) for a in rule))):
            raise ConstraintTypeError(
                f"register_layout rule for '{name}' of {block_class.__name__} must be an int, a "
                f"tuple of ints or a function (block, shape) -> axes: got {rule!r}.")
        checked[name] = rule
    _RULES.setdefault(block_class, {}).update(checked)


def fan_in(block: Optional[Block], attr: Optional[str], shape: Sequence[int]) -> Reduction:
    """The per-output-unit reduction of parameter ``attr`` of ``block`` with the given shape.

    Rules registered for the block's class (or its nearest registered base class) win; a
    parameter without a rule uses the bare-array default: every axis but 0, or axis 0 of a 1-D
    parameter.

    Parameters
    ----------
    block : Block or None
        The block that owns the parameter; None gives the bare-array default.
    attr : str or None
        The parameter's attribute name on ``block`` (``"weight"``, ``"l0_i2h_weight"``).
    shape : sequence of int
        The parameter's (known) shape.
    """
    shape = tuple(shape)
    rule = _find_rule(block, attr) if block is not None and attr is not None else None
    if rule is None:
        return per_output_unit(shape)
    result = rule(block, shape) if callable(rule) else rule
    if isinstance(result, Reduction):
        return result
    where = f"Layout rule of {type(block).__name__}.{attr}: axes {result!r}"
    return Reduction(normalize_axes(result, shape, where))


def _find_rule(block: Block, attr: str) -> Optional[LayoutRule]:
    for cls in type(block).__mro__:
        rules = _RULES.get(cls)
        if not rules:
            continue
        if attr in rules:
            return rules[attr]
        for pattern, rule in rules.items():
            if fnmatch.fnmatchcase(attr, pattern):
                return rule
    return None


def _convolution_weight(block: Block, shape: Tuple[int, ...]) -> Reduction:
    """Convolution weights: every axis but the output-channel one, per group for transposed."""
    ndim = len(shape)
    transposed, groups, layout = compat.convolution_settings(block)
    channels_last = layout.endswith("C")
    kernel = tuple(range(1, ndim - 1)) if channels_last else tuple(range(2, ndim))
    if not transposed:
        # (channels, in/groups, *kernel) or channels-last (channels, *kernel, in/groups).
        return Reduction(tuple(range(1, ndim)), kernel_axes=kernel)
    out_axis = ndim - 1 if channels_last else 1
    if groups == 1:
        return Reduction(tuple(a for a in range(ndim) if a != out_axis), kernel_axes=kernel)
    # (in, out/g, *kernel): input channels come in g blocks, and output channel j of group k
    # reads only block k. View as (g, in/g, out/g, *kernel) (or (g, in/g, *kernel, out/g)) and
    # reduce everything but the group and output-channel axes.
    view = (groups, shape[0] // groups) + shape[1:]
    keep = (0, out_axis + 1)
    return Reduction(tuple(a for a in range(len(view)) if a not in keep), view, kernel)


register_layout(nn.Dense, {"weight": (1,)})
register_layout(nn.Embedding, {"weight": (1,)})
register_layout(compat.convolution_base(), {"weight": _convolution_weight})
register_layout(compat.recurrent_layer_base(), {"*_weight": (1,)})
register_layout(rnn.HybridRecurrentCell, {"i2h_weight": (1,), "h2h_weight": (1,), "h2r_weight": (1,)})
