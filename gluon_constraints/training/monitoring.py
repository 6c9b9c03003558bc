"""Reading and writing the projection statistics a trainer built with ``monitor=True`` keeps."""

from __future__ import annotations

import csv
import os
from typing import Any, Dict, Mapping, Optional

from .. import _mxnet_compat as compat
from ..errors import DependencyError, EnforcementError
from ..gluon.attachment import constraint_of

__all__ = ["collect_stats", "describe", "CSVWriter", "TensorBoardWriter"]

#: The statistics of one parameter, in the order the kernels write them.
FIELDS = ("moved", "max_norm", "mean_norm")


def collect_stats(trainer: Any) -> Dict[str, Dict[str, Any]]:
    """The body of ``ConstrainedTrainer.constraint_stats`` (see there)."""
    optimizer = trainer.optimizer
    if not getattr(optimizer, "monitor", False):
        raise EnforcementError(
            "constraint_stats() needs a trainer built with monitor=True "
            "(gc.ConstrainedTrainer(..., monitor=True) or gc.enforce(trainer, monitor=True)).")
    kvstore = compat.kvstore_of(trainer)
    if kvstore is not None and "dist" in kvstore.type and compat.updates_on_kvstore(trainer):
        raise EnforcementError(
            "constraint_stats(): the parameter servers run the projections here, so their "
            "statistics stay on the servers. Build the trainer with update_on_kvstore=False to "
            "project (and monitor) on the workers.")
    stats = {}
    for index, param in enumerate(compat.trainer_parameters(trainer)):
        if constraint_of(param) is None or param.grad_req == "null":
            continue
        first = param.list_ctx()[0]
        held = {key[1]: value for key, value in optimizer.stats.items() if key[0] == index}
        if not held:
            continue  # not projected yet
        buffer = held.get(str(first), next(iter(held.values())))  # else the kvstore's copy
        stats[param.name] = {name: buffer[at:at + 1].copyto(first) for at, name in enumerate(FIELDS)}
    return stats


class CSVWriter:
    """Append projection statistics to a CSV file: ``step,parameter,moved,max_norm,mean_norm``.

    Parameters
    ----------
    path : str
        The file; created with a header line if it does not exist, appended to otherwise.

    Examples
    --------
    >>> writer = gc.CSVWriter("constraints.csv")                     # doctest: +SKIP
    >>> writer.write(step, trainer.constraint_stats())               # doctest: +SKIP
    """

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)

    def write(self, step: int, stats: Mapping[str, Mapping[str, Any]]) -> None:
        """Append one row per parameter of ``stats`` (``constraint_stats()``, or floats)."""
        new = not os.path.exists(self.path)
        with open(self.path, "a", newline="") as f:
            rows = csv.writer(f)
            if new:
                rows.writerow(("step", "parameter") + FIELDS)
            for name, fields in _floats(stats).items():
                rows.writerow([step, name] + [repr(fields[key]) for key in FIELDS])


class TensorBoardWriter:
    """Write projection statistics as TensorBoard scalars ``constraints/<parameter>/<field>``.

    Needs ``tensorboardX``: the ``tensorboard`` extra (``pip install '.[cpu,tensorboard]'`` in a clone).

    Parameters
    ----------
    logdir : str
        TensorBoard's log directory.

    Raises
    ------
    ImportError
        If tensorboardX is not installed, saying how to install it.
    """

    def __init__(self, logdir: str) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError as error:
            raise DependencyError(
                "gc.TensorBoardWriter needs tensorboardX: install the tensorboard extra with the package "
                "(pip install '.[cpu,tensorboard]' in a clone), or pip install tensorboardX 'numpy<1.24' "
                "(numpy must stay below 1.24 for MXNet 1.9).") from error
        self.summary = SummaryWriter(logdir)

    def write(self, step: int, stats: Mapping[str, Mapping[str, Any]]) -> None:
        """Add one scalar per parameter and field of ``stats`` at ``step``."""
        for name, fields in _floats(stats).items():
            for key in FIELDS:
                self.summary.add_scalar(f"constraints/{name}/{key}", fields[key], step)
        self.summary.flush()

    def close(self) -> None:
        """Write everything out and close the event file (tensorboardX writes asynchronously)."""
        self.summary.close()


def _floats(stats: Mapping[str, Mapping[str, Any]]) -> Dict[str, Dict[str, float]]:
    """Statistics as floats, whether given as NDArrays or numbers already."""
    return {name: {key: float(value.asscalar()) if hasattr(value, "asscalar") else float(value)
                   for key, value in fields.items()} for name, fields in stats.items()}


def describe(stats: Mapping[str, Mapping[str, float]], prefix: Optional[str] = None) -> str:
    """One line per parameter: ``name: moved 12.5%, max norm 3.000, mean norm 2.412``."""
    lines = [f"{name}: moved {f['moved']:.1%}, max norm {f['max_norm']:.4g}, "
             f"mean norm {f['mean_norm']:.4g}" for name, f in _floats(stats).items()]
    return "\n".join(f"{prefix}{line}" if prefix else line for line in lines)
