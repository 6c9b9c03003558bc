"""Constraints on MXNet's parameter-server kvstores (``dist_sync``, ``dist_device_sync``,
``dist_async``): decisions taken before the first step, and the start-up fix after it.

With ``update_on_kvstore`` (the default for every ``dist_*`` kvstore) the optimizer runs on the
servers. They unpickle it by module path, see every weight flattened to 1-D (the pickled
projection snapshot carries the real shape), and hold arrays with at least
``MXNET_KVSTORE_BIGARRAY_BOUND`` elements cut into contiguous pieces across servers, which may
start mid-row: a norm over a unit's weights cannot be computed there. Everything that would fail
silently on a server is decided here, on the workers, before the optimizer is sent.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any, Iterable

import numpy as np

from .. import _mxnet_compat as compat
from ..catalogue import Constraint, Function
from ..catalogue.compose import Compose
from ..errors import EnforcementError
from ..gluon.attachment import constraint_of

__all__ = ["prepare_distributed", "settle_initial_weights"]

_log = logging.getLogger(__name__)


def prepare_distributed(trainer: Any) -> None:
    """Check or adjust a trainer with a distributed kvstore before its kvstore is created.

    With the update on the servers: refuse constraint and optimizer classes the servers cannot
    import, and handle constrained parameters the servers would hold in pieces: with a sync
    kvstore and ``update_on_kvstore`` left to its default, the update moves to the workers; with
    ``update_on_kvstore=True`` or ``dist_async`` it is an error naming the parameter, its size and
    the settings that fix it.

    Raises
    ------
    EnforcementError
        As described above.
    """
    kv_type = _kvstore_type(trainer)
    if "dist" not in kv_type or not _updates_on_servers(trainer, kv_type):
        return
    inner = getattr(trainer.optimizer, "inner", trainer.optimizer)
    _require_importable(type(inner), "optimizer class")
    constrained = [(p, c) for p in compat.trainer_parameters(trainer) for c in [constraint_of(p)] if c is not None]
    for _, constraint in constrained:
        for member in _members(constraint):
            _require_importable(type(member), "constraint class")
            if isinstance(member, Function):
                _require_importable(member.fn, "constraint function")
    pieces = [(p, _size(p), reason) for p, c in constrained if not c.elementwise
              for reason in [_split_reason(_size(p))] if reason]
    if not pieces:
        return
    _, explicit = compat.kvstore_setting(trainer)
    if "async" not in kv_type and explicit is None:
        _log.info("Updating on the workers (update_on_kvstore=False): the servers would hold %s "
                  "in pieces.", ", ".join(p.name for p, _, _ in pieces))
        compat.set_update_on_kvstore(trainer, False)
        return
    param, size, reason = pieces[0]
    fix = ("set update_on_kvstore=False (the update then runs on the workers with full shapes), "
           if "async" not in kv_type else "")
    raise EnforcementError(
        f"Parameter '{param.name}' of shape {tuple(param.shape)} ({size} elements) has a norm "
        f"constraint, but {reason}, so the servers would each hold a piece of it (pieces may "
        f"start mid-row) and cannot project it. To fix: {fix}raise "
        f"MXNET_KVSTORE_BIGARRAY_BOUND above {size} in every worker's environment, or run a "
        f"single server." + (f" Also affected: {', '.join(p.name for p, _, _ in pieces[1:])}."
                             if len(pieces) > 1 else ""))


def settle_initial_weights(trainer: Any) -> None:
    """After the kvstore is created: make every worker start from the same initial weights.

    With a distributed kvstore and the update on the workers, MXNet 1.9.1's first
    ``step()`` races the initial broadcast (its pull) against the first gradient push, and a
    worker sometimes starts from the sum of gradients. Broadcasting now and waiting at a barrier
    before the first push removes the race.
    """
    if compat.is_distributed(trainer) and compat.kvstore_of(trainer) \
            and not compat.updates_on_kvstore(trainer):
        compat.broadcast_initial_weights(trainer)


def _kvstore_type(trainer: Any) -> str:
    spec, _ = compat.kvstore_setting(trainer)
    return spec if isinstance(spec, str) else str(getattr(spec, "type", ""))


def _updates_on_servers(trainer: Any, kv_type: str) -> bool:
    """Gluon's own choice of update_on_kvstore for a distributed kvstore (trainer._init_kvstore)."""
    _, explicit = compat.kvstore_setting(trainer)
    if "async" in kv_type:
        return True
    if explicit is not None:
        return bool(explicit)
    if compat.has_sparse_gradients(trainer):
        return True
    return bool(int(os.getenv("MXNET_UPDATE_ON_KVSTORE", "1")))


def _split_reason(size: int) -> str:
    """Why the servers would hold an array of ``size`` elements in pieces ('' if they would not)."""
    servers = int(os.getenv("DMLC_NUM_SERVER", "1"))
    bound = int(os.getenv("MXNET_KVSTORE_BIGARRAY_BOUND", str(1000 * 1000)))
    if servers > 1 and size >= bound:
        return (f"it has at least MXNET_KVSTORE_BIGARRAY_BOUND={bound} elements and there are "
                f"{servers} servers")
    threshold = int(os.getenv("MXNET_KVSTORE_SLICE_THRESHOLD", str(40 * 1000)))
    if os.getenv("DMLC_PS_VAN_TYPE") == "p3" and size > threshold:
        return f"the P3 van slices arrays above MXNET_KVSTORE_SLICE_THRESHOLD={threshold} elements"
    return ""


def _require_importable(cls: Any, role: str) -> None:
    if _importable(cls):
        return
    where = "in __main__" if cls.__module__ == "__main__" else f"in {cls.__module__}.{cls.__qualname__}"
    raise EnforcementError(
        f"The {role} {cls.__name__} is defined {where}, which the parameter servers cannot "
        f"import: they unpickle the optimizer and its constraints by module path, and when that "
        f"fails MXNet only prints a line on the server while the weights silently become sums of "
        f"gradients. Move {cls.__name__} into a module the servers can import (installed, or on "
        f"their PYTHONPATH), or set update_on_kvstore=False so the update runs on the workers.")


def _importable(cls: type) -> bool:
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        return False
    try:
        found: Any = importlib.import_module(cls.__module__)
        for part in cls.__qualname__.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return False
    return found is cls


def _members(constraint: Constraint) -> Iterable[Constraint]:
    yield constraint
    if isinstance(constraint, Compose):
        for member in constraint.constraints:
            yield from _members(member)


def _size(param: Any) -> int:
    return int(np.prod(compat.data_shape(param) or (0,)))


