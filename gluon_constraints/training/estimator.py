"""``ConstraintHandler``: constraints for ``mxnet.gluon.contrib.estimator.Estimator``."""

from __future__ import annotations

import warnings
from typing import Any, Iterable

from mxnet.gluon.contrib.estimator.event_handler import EpochEnd, TrainBegin, TrainEnd

from .. import _mxnet_compat as compat
from ..errors import UnenforcedConstraintWarning
from ..gluon.attachment import constraint_of
from .monitoring import describe
from .optimizer import switch
from .trainer import enforce

__all__ = ["ConstraintHandler"]


class ConstraintHandler(TrainBegin, EpochEnd, TrainEnd):
    """Enforce the constraints of an Estimator's network during ``Estimator.fit``.

    At ``train_begin``, before the first batch, it installs :func:`gluon_constraints.enforce` into
    ``estimator.trainer`` (a plain ``gluon.Trainer`` is fine), so every update of every batch is
    followed by the projection on the copy the update writes, in every kvstore configuration.
    Projecting in ``batch_end`` instead would act on device copies only, which the kvstore
    overwrites at the next step.

    With ``monitor=True`` the trainer records projection statistics
    (:meth:`~gluon_constraints.ConstrainedTrainer.constraint_stats`), and at the end of each
    epoch the handler logs them with the estimator's logger (one line per parameter: the
    fraction of units the last projection moved, the largest and mean unit norm) and passes them
    to each writer (:class:`~gluon_constraints.CSVWriter`,
    :class:`~gluon_constraints.TensorBoardWriter`) with the epoch number: one host
    synchronisation per epoch. Epochs are numbered from 0, as the Estimator's own log lines
    (``[Epoch 0] Finished in ...``) number them.

    Parameters
    ----------
    monitor : bool, default False
        Record and report the statistics.
    writers : iterable, default ()
        Objects with ``write(step, stats)`` called at each epoch's end (with ``monitor=True``);
        those with a ``close()`` method are closed at ``train_end``.

    Examples
    --------
    >>> est = Estimator(net, loss, trainer=trainer, context=[mx.cpu(0), mx.cpu(1)])  # doctest: +SKIP
    >>> est.fit(train_data, epochs=3, event_handlers=[gc.ConstraintHandler()])       # doctest: +SKIP
    """

    def __init__(self, monitor: bool = False, writers: Iterable[Any] = ()) -> None:
        self.monitor = switch("monitor", monitor)
        self.writers = list(writers)
        self.epoch = 0

    def epoch_end(self, estimator: Any, *args: Any, **kwargs: Any) -> bool:
        """Log and write the statistics of the epoch's last projections (``monitor=True``)."""
        if self.monitor:
            stats = estimator.trainer.constraint_stats()
            estimator.logger.info(describe(stats, prefix=f"[Epoch {self.epoch}] constraints: "))
            for writer in self.writers:
                writer.write(self.epoch, stats)
        self.epoch += 1
        return False

    def train_end(self, estimator: Any, *args: Any, **kwargs: Any) -> None:
        """Close the writers that can be closed."""
        for writer in self.writers:
            if hasattr(writer, "close"):
                writer.close()

    def train_begin(self, estimator: Any, *args: Any, **kwargs: Any) -> None:
        """Install enforcement into ``estimator.trainer`` and warn about uncovered parameters."""
        self.epoch = 0
        trainer = enforce(estimator.trainer, monitor=self.monitor)
        owned = {id(p) for p in compat.trainer_parameters(trainer)}
        stray = sorted(p.name for p in estimator.net.collect_params().values()
                       if id(p) not in owned and p.grad_req != "null" and constraint_of(p) is not None)
        if stray:
            warnings.warn(
                f"These constrained parameters of the network are not in the estimator's "
                f"trainer, so their constraints are not enforced: {', '.join(stray)}.",
                UnenforcedConstraintWarning, stacklevel=2)
