"""``ConstraintHandler``: constraints for ``mxnet.gluon.contrib.estimator.Estimator``."""

from __future__ import annotations

import warnings
from typing import Any

from mxnet.gluon.contrib.estimator.event_handler import TrainBegin

from .. import _mxnet_compat as compat
from ..errors import UnenforcedConstraintWarning
from ..gluon.attachment import constraint_of
from .trainer import enforce

__all__ = ["ConstraintHandler"]


class ConstraintHandler(TrainBegin):
    """Enforce the constraints of an Estimator's network during ``Estimator.fit``.

    At ``train_begin``, before the first batch, it installs :func:`gluon_constraints.enforce` into
    ``estimator.trainer`` (a plain ``gluon.Trainer`` is fine), so every update of every batch is
    followed by the projection on the copy the update writes, in every kvstore configuration.
    Projecting in ``batch_end`` instead would act on device copies only, which the kvstore
    overwrites at the next step.

    Examples
    --------
    >>> est = Estimator(net, loss, trainer=trainer, context=[mx.cpu(0), mx.cpu(1)])  # doctest: +SKIP
    >>> est.fit(train_data, epochs=3, event_handlers=[gc.ConstraintHandler()])       # doctest: +SKIP
    """

    def train_begin(self, estimator: Any, *args: Any, **kwargs: Any) -> None:
        """Install enforcement into ``estimator.trainer`` and warn about uncovered parameters."""
        trainer = enforce(estimator.trainer)
        owned = {id(p) for p in compat.trainer_parameters(trainer)}
        stray = sorted(p.name for p in estimator.net.collect_params().values()
                       if id(p) not in owned and p.grad_req != "null" and constraint_of(p) is not None)
        if stray:
            warnings.warn(
                f"These constrained parameters of the network are not in the estimator's "
                f"trainer, so their constraints are not enforced: {', '.join(stray)}.",
                UnenforcedConstraintWarning, stacklevel=2)
