"""``verify_constraints``: check every copy a trainer owns (a debugging aid; it synchronises)."""

from __future__ import annotations

from typing import Any, List

from mxnet import ndarray

from .. import _mxnet_compat as compat
from ..catalogue.feasibility import violation
from ..catalogue.host import host_copy
from ..errors import ConstraintViolationError
from ..gluon.attachment import constraint_of, reduction_of

__all__ = ["verify_constraints"]

def verify_constraints(trainer: Any) -> None:
    """Check that every copy of every constrained parameter satisfies its constraint.

    Checks each device copy and, where the update runs on a kvstore (``update_on_kvstore``), the
    copy the kvstore keeps (pulled back; on a distributed kvstore, the servers' copy). Of a
    row-sparse weight (``stype='row_sparse'``) it checks every row of the kvstore's copy: the
    devices hold only the rows they last pulled, as they were before the update. A copy is
    violated if it holds a NaN or an infinity, or if projecting it would change it by more than
    float rounding. All copies must also be bitwise identical, except a ``dist_async`` server
    copy, which moves on with other workers' pushes. A constraint that moves a slice only part
    of the way (``MinMaxNorm`` with ``rate < 1``) reports slices it has not reached yet, and
    so does a trainer with ``every > 1`` between its projecting steps; a ``Scheduled``
    constraint is checked with the bound of the parameter's last update. A debugging aid: it
    synchronises with the host.

    Parameters
    ----------
    trainer : mxnet.gluon.Trainer
        A trainer with enforcement installed.

    Raises
    ------
    ConstraintViolationError
        Naming each violated parameter, the copy, and by how much the projection would change it
        (largest change relative to the largest entry) or how many entries are not finite, and
        each parameter whose device copies differ.
    """
    problems: List[str] = []
    kvstore = compat.kvstore_of(trainer)
    on_kvstore = compat.updates_on_kvstore(trainer)
    for index, param in enumerate(compat.trainer_parameters(trainer)):
        constraint = constraint_of(param)
        if constraint is None or param.grad_req == "null":
            continue
        if constraint.scheduled:  # the bound of the last update
            distributed = kvstore is not None and on_kvstore and "dist" in kvstore.type
            constraint = constraint.at(_last_update(trainer, index, distributed))
        reduction = reduction_of(param)
        if compat.storage_type(param) == "row_sparse":
            copies = [("kvstore copy", _stored_rows(kvstore, index, param))]
        else:
            copies = [(f"context {a.context}", a.as_nd_ndarray()) for a in param.list_data()]
            if on_kvstore and kvstore is not None:
                stored = ndarray.zeros(copies[0][1].shape, ctx=copies[0][1].context, dtype=param.dtype)
                kvstore.pull(index, out=stored)
                copies.append(("kvstore copy", stored))
        for label, array in copies:
            found = violation(constraint, array, reduction)
            if found is not None:
                problems.append(f"{param.name} ({label}): {found}")
        first = host_copy(copies[0][1])
        comparable = copies[1:-1] if kvstore is not None and on_kvstore and "async" in kvstore.type else copies[1:]
        for label, array in comparable:
            if host_copy(array).tobytes() != first.tobytes():
                problems.append(f"{param.name} ({label}): differs from {copies[0][0]}")
    if problems:
        raise ConstraintViolationError(
            "Constraints are violated:\n" + "\n".join(f"  {p}" for p in problems))



def _stored_rows(kvstore: Any, index: int, param: Any) -> Any:
    """Every row of the kvstore's copy of row-sparse ``param``, pulled as a dense array."""
    rows = ndarray.sparse.zeros("row_sparse", param.shape, dtype=param.dtype)
    kvstore.row_sparse_pull(index, out=rows, row_ids=ndarray.arange(param.shape[0], dtype="int64"))
    return rows.tostype("default")


def _last_update(trainer: Any, index: int, on_servers: bool) -> int:
    """The update count of parameter ``index``: the optimizer's, or where parameter servers
    update (and count), the number of updates this trainer made."""
    if on_servers:
        return trainer._gluon_constraints.updates
    return compat.update_count(getattr(trainer.optimizer, "inner", trainer.optimizer), index)
