"""Projecting constrained parameters outside training: on every context, without host syncs."""

from __future__ import annotations

from typing import Any, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

from mxnet.gluon.block import Block
from mxnet.gluon.parameter import Parameter, ParameterDict

from .. import _mxnet_compat as compat
from ..catalogue import Constraint, Reduction
from ..errors import ConstraintShapeError, ConstraintTypeError, EnforcementError
from ..gluon.attachment import Owner, check_parameter, constraint_of, layout_of, owner_of, reduction_of, state_of
from ..kernels.library import kernel
from ..kernels.projection import (KernelItem, ProjectionCall, kernel_item, project_in_place, project_touched_rows,
                                  projection_call, projects_rows, touched_group)

__all__ = ["apply_constraints", "parameters_of", "check_storage"]

Target = Union[Block, ParameterDict, Parameter, Iterable[Parameter]]


class CheckedProjection(NamedTuple):
    """A constrained parameter's checked projection, valid while its constraint, owning layer,
    recorded layout, device copies and the kernel are the same objects. ``items``: each copy's
    kernel item, or None where the stock path projects (the first copy, then copied to the
    others).

    Kept in the parameter's record (it lives and dies with it; copies and pickles of the
    parameter do not get it: the kernel items' views belong to these very arrays).
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

    Each parameter's checked projection is kept with it and reused while its constraint, owning
    layer and device copies stay the same objects. A Block ``target`` also keeps its list of
    parameters (while every child and parameter table in its tree holds the same objects) and
    the prepared kernel call (while every parameter keeps its checked projection), so a repeated call costs
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
    ConstraintShapeError
        If a constrained parameter is not initialized yet, or its constraint does not fit its
        shape. All parameters are checked before any is written, so nothing changes then.
    ConstraintTypeError
        If a constrained parameter's dtype is not floating point, or ``target`` holds something
        that is not a Parameter.
    """
    checked: List[Tuple[Parameter, CheckedProjection]] = []
    loaded = kernel()
    for param in parameters_of(target):
        constraint = getattr(param, "constraint", None)
        if constraint is None or (param.grad_req == "null" and not include_frozen):
            continue
        checked.append((param, _checked_projection(param, constraint, loaded)))
    _kernel_work(target, [projection for _, projection in checked]).run()
    for _, projection in checked:
        if projection.items is None:
            first, *others = [_classic(a) for a in projection.copies]
            _project_whole(first, projection.constraint, projection.reduction)
            for copy in others:
                first.copyto(copy)
    return [param.name for param, _ in checked]


def _project_whole(array: Any, constraint: Constraint, reduction: Reduction) -> None:
    """Project ``array`` in place with stock operators; a row-sparse one row by row (its rows are
    its own row indices: every row a weight stores)."""
    if array.stype != "row_sparse":
        project_in_place([(array, constraint, reduction)], use_fused=False)
        return
    project_touched_rows(array, array, constraint, reduction, None,
                         touched_group(array, constraint, reduction) if kernel() is not None else None)


def check_storage(param: Parameter, constraint: Any, shape: Optional[Sequence[int]]) -> None:
    """Refuse a constraint on a row-sparse weight unless it projects each row on its own.

    A row-sparse weight (``Parameter(stype='row_sparse')``) lives whole only on the kvstore,
    which updates the rows a gradient has; devices pull the rows they use. Constraints that
    project rows (``MaxNorm``, ``MinMaxNorm``, ``UnitNorm``, ``NonNeg``, ``Clip``, ``Simplex``,
    ``L1Ball`` along rows) run there on the rows an update wrote; ``SpectralNorm`` and
    ``Orthogonal`` need the whole matrix.

    Raises
    ------
    EnforcementError
        Naming the parameter, its constraint and the families it can take.
    """
    storage = compat.storage_type(param)
    if storage == "default" or shape is None:
        return
    if storage != "row_sparse" or not projects_rows(constraint, reduction_of(param, shape), tuple(shape)):
        raise EnforcementError(
            f"Parameter '{param.name}' has {storage} storage and the constraint {constraint!r}, which "
            f"projects more than one row at a time: a row-sparse weight is updated a few rows at a "
            f"time on its kvstore, so it takes constraints that project each row on its own "
            f"(MaxNorm, MinMaxNorm, UnitNorm, NonNeg, Clip, Simplex, L1Ball along rows; see "
            f"docs/training.md, 'Row-sparse gradients'). Use a dense weight for {constraint!r}.")



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
            raise ConstraintTypeError(
                f"apply_constraints expects a Block, a ParameterDict, a Parameter or Parameters: "
                f"got an element {p!r} of type {type(p).__name__}.")
    return params


def _checked_projection(param: Parameter, constraint: Any, loaded: Any) -> CheckedProjection:
    """The parameter's checked projection with kernel ``loaded``: kept from an earlier call while
    still valid, else made (checking that ``constraint`` is a Constraint that fits)."""
    state = state_of(param)
    kept = state.checked
    if kept is not None and kept.constraint is constraint and kept.owner is state.owner \
            and kept.layout is state.layout and kept.copies is compat.data_arrays(param) \
            and kept.kernel is loaded:
        return kept
    constraint, owner, copies = constraint_of(param), owner_of(param), compat.data_arrays(param)
    if copies is None:
        raise ConstraintShapeError(
            f"Parameter '{param.name}' is not initialized yet (its shape {param.shape} is "
            f"known only after the first forward pass): initialize it and run a forward pass "
            f"before apply_constraints.")
    check_parameter(param, constraint, compat.data_shape(param), owner)
    check_storage(param, constraint, compat.data_shape(param))
    reduction = reduction_of(param)
    items = [kernel_item(_classic(a), constraint, reduction) for a in copies]
    fused = [item for item in items if item is not None]
    checked = CheckedProjection(constraint, owner, layout_of(param), copies, loaded, reduction,
                                fused if len(fused) == len(items) else None)
    state.checked = checked
    return checked


class _KeptWork(NamedTuple):
    """The kernel work of a Block's last projection and the checked projections it was prepared
    from, kept in the Block's record and reused while its constrained parameters have the same
    ones (it holds their arrays until then)."""

    checked: List[CheckedProjection]
    work: ProjectionCall


def _kernel_work(target: Target, checked: List[CheckedProjection]) -> ProjectionCall:
    """The prepared kernel work of ``checked``: kept on a Block ``target`` from its last call while
    its checked projections are the same objects, else prepared (once per change)."""
    state = compat.block_state(target) if isinstance(target, Block) else None
    kept = None if state is None else state.projection
    if kept is not None and compat.same_objects(checked, kept.checked):
        return kept.work
    work = projection_call([item for c in checked if c.items for item in c.items])
    if state is not None:
        state.projection = _KeptWork(checked, work)
    return work


def _classic(array: Any) -> Any:
    """A classic NDArray view of a parameter array (numpy-mode arrays share the memory)."""
    return array.as_nd_ndarray()
