"""Projecting constrained parameters outside training: on every context, without host syncs."""

from __future__ import annotations

from typing import Iterable, List, Tuple, Union

from mxnet.gluon.block import Block
from mxnet.gluon.parameter import DeferredInitializationError, Parameter, ParameterDict

from .. import _mxnet_compat as compat
from ..catalogue import Constraint, Reduction
from ..gluon.attachment import check_parameter, constraint_of, owner_of, reduction_of
from ..kernels.projection import project_in_place

__all__ = ["apply_constraints", "parameters_of"]

Target = Union[Block, ParameterDict, Parameter, Iterable[Parameter]]


def apply_constraints(target: Target, include_frozen: bool = False) -> List[str]:
    """Project every constrained parameter once, on every context it lives on.

    The projection is computed in place on the first device copy (with the fused kernel where
    it applies) and copied into every other copy, so all copies end bitwise identical. No host
    synchronisation happens: the work is queued on MXNet's engine like any other operator.

    Parameters
    ----------
    target : Block, ParameterDict, Parameter or iterable of Parameters
        What to project; a Block means all of ``block.collect_params()``.
    include_frozen : bool, default False
        Also project parameters with ``grad_req='null'``, which training never changes and
        which are otherwise left alone.

    Returns
    -------
    list of str
        Names of the parameters projected.

    Raises
    ------
    ValueError
        If a constrained parameter is not initialized yet, or its constraint does not fit its
        shape. All parameters are checked before any is written, so nothing changes then.
    ConstraintTypeError
        If a constrained parameter's dtype is not floating point.
    """
    plan: List[Tuple[Parameter, Constraint, Reduction]] = []
    for param in parameters_of(target):
        constraint = constraint_of(param)
        if constraint is None or (param.grad_req == "null" and not include_frozen):
            continue
        if not _initialized(param):
            raise ValueError(
                f"Parameter '{param.name}' is not initialized yet (its shape {param.shape} is "
                f"known only after the first forward pass): initialize it and run a forward pass "
                f"before apply_constraints.")
        check_parameter(param, constraint, compat.data_shape(param), owner_of(param))
        plan.append((param, constraint, reduction_of(param)))
    firsts = [(_classic(param.list_data()[0]), constraint, reduction)
              for param, constraint, reduction in plan]
    project_in_place(firsts)
    for param, _, _ in plan:
        copies = [_classic(a) for a in param.list_data()]
        for copy in copies[1:]:
            copies[0].copyto(copy)
    return [param.name for param, _, _ in plan]


def parameters_of(target: Target) -> List[Parameter]:
    """The parameters ``target`` names (a Block: all of ``collect_params()``)."""
    if isinstance(target, Block):
        return list(target.collect_params().values())
    if isinstance(target, ParameterDict):
        return list(target.values())
    if isinstance(target, Parameter):
        return [target]
    params = list(target)
    for p in params:
        if not isinstance(p, Parameter):
            raise TypeError(
                f"apply_constraints expects a Block, a ParameterDict, a Parameter or Parameters: "
                f"got an element {p!r}.")
    return params


def _initialized(param: Parameter) -> bool:
    try:
        param.list_data()
    except (DeferredInitializationError, RuntimeError):
        return False
    return True


def _classic(array):
    """A classic NDArray view of a parameter array (numpy-mode arrays share the memory)."""
    return array.as_nd_ndarray()
