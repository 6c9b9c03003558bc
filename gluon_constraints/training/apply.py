"""Projecting constrained parameters outside training: on every context, without host syncs."""

from __future__ import annotations

from typing import Any, Iterable, List, NamedTuple, Optional, Tuple, Union

from mxnet.gluon.block import Block
from mxnet.gluon.parameter import Parameter, ParameterDict

from .. import _mxnet_compat as compat
from ..catalogue import Constraint, Reduction
from ..gluon.attachment import (PLAN_ATTRIBUTE, Owner, check_parameter, constraint_of, layout_of,
                                owner_of, reduction_of)
from ..kernels.library import kernel
from ..kernels.projection import (KernelItem, ProjectionBatch, kernel_item, prepared_projection,
                                  project_in_place)

__all__ = ["apply_constraints", "parameters_of"]

Target = Union[Block, ParameterDict, Parameter, Iterable[Parameter]]
_WORK_ATTRIBUTE = "_gluon_constraints_kernel_work"


class _Plan(NamedTuple):
    """A constrained parameter's checked projection, valid while its constraint, owning layer,
    recorded layout, device copies and the kernel are the same objects. ``items``: each copy's kernel item, or
    None where the stock path projects (the first copy, then copied to the others).

    Kept on the parameter (it lives and dies with it). A deep copy or pickle of the parameter
    gets None instead (``__reduce__``): copying the kernel items' views would give arrays apart
    from the copy's own data.
    """

    constraint: Constraint
    owner: Owner
    layout: Optional[Reduction]
    copies: List[Any]
    kernel: Any
    reduction: Reduction
    items: Optional[List[KernelItem]]

    def __reduce__(self) -> Tuple[Any, Tuple[()]]:
        return type(None), ()


def apply_constraints(target: Target, include_frozen: bool = False) -> List[str]:
    """Project every constrained parameter once, on every context it lives on.

    Each device copy is projected in place (all of them in one fused kernel call where it
    applies; elsewhere the first copy with stock operators, then copied into the others), so
    copies that agree before, as Gluon keeps them, are bitwise identical after. No host
    synchronisation happens: the work is queued on MXNet's engine like any other operator.

    Each parameter's checks and plan are kept with it and reused while its constraint, owning
    layer and device copies stay the same objects. A Block ``target`` also keeps its list of
    parameters (while every child and parameter table in its tree holds the same objects) and
    the prepared kernel call (while every parameter keeps its plan), so a repeated call costs
    about one read of the weights and a check of the tree.

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
    planned: List[Tuple[Parameter, _Plan]] = []
    loaded = kernel()
    for param in parameters_of(target):
        constraint = getattr(param, "constraint", None)
        if constraint is None or (param.grad_req == "null" and not include_frozen):
            continue
        planned.append((param, _plan_of(param, constraint, loaded)))
    _kernel_work(target, [plan for _, plan in planned]).run()
    for _, plan in planned:
        if plan.items is None:
            first, *others = [_classic(a) for a in plan.copies]
            project_in_place([(first, plan.constraint, plan.reduction)], use_fused=False)
            for copy in others:
                first.copyto(copy)
    return [param.name for param, _ in planned]


def parameters_of(target: Target) -> List[Parameter]:
    """The parameters ``target`` names (a Block: all of ``collect_params()``)."""
    if isinstance(target, Block):
        return compat.block_parameters(target)
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


def _plan_of(param: Parameter, constraint: Any, loaded: Any) -> _Plan:
    """The parameter's checked plan with kernel ``loaded``: kept from an earlier call while
    still valid, else made (checking that ``constraint`` is a Constraint that fits)."""
    plan = param.__dict__.get(PLAN_ATTRIBUTE)
    if plan is not None and plan.constraint is constraint and plan.owner is owner_of(param) \
            and plan.layout is layout_of(param) and plan.copies is compat.data_arrays(param) \
            and plan.kernel is loaded:
        return plan
    constraint, owner, copies = constraint_of(param), owner_of(param), compat.data_arrays(param)
    if copies is None:
        raise ValueError(
            f"Parameter '{param.name}' is not initialized yet (its shape {param.shape} is "
            f"known only after the first forward pass): initialize it and run a forward pass "
            f"before apply_constraints.")
    check_parameter(param, constraint, compat.data_shape(param), owner)
    reduction = reduction_of(param)
    items = [kernel_item(_classic(a), constraint, reduction) for a in copies]
    plan = _Plan(constraint, owner, layout_of(param), copies, loaded, reduction,
                 items if all(item is not None for item in items) else None)
    param.__dict__[PLAN_ATTRIBUTE] = plan
    return plan


class _KeptWork(NamedTuple):
    """The kernel work of a Block's last projection and the plans it was prepared from, kept
    on the Block (``compat.keep_on_block``) and reused while its constrained parameters have the
    same plans (it holds their arrays until then)."""

    plans: List[_Plan]
    work: ProjectionBatch


def _kernel_work(target: Target, plans: List[_Plan]) -> ProjectionBatch:
    """The prepared kernel work of ``plans``: kept on a Block ``target`` from its last call while
    its plans are the same objects, else prepared (once per change)."""
    kept = compat.kept_on_block(target, _WORK_ATTRIBUTE) if isinstance(target, Block) else None
    if kept is not None and compat.same_objects(plans, kept.plans):
        return kept.work
    work = prepared_projection([item for plan in plans if plan.items for item in plan.items])
    if isinstance(target, Block):
        compat.keep_on_block(target, _WORK_ATTRIBUTE, _KeptWork(plans, work))
    return work


def _classic(array: Any) -> Any:
    """A classic NDArray view of a parameter array (numpy-mode arrays share the memory)."""
    return array.as_nd_ndarray()
