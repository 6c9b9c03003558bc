"""``gc.report``: what each constrained parameter of a network looks like against its constraint,
for model cards: as a dict, a Markdown table and JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from ..catalogue import WHOLE, serialize
from ..catalogue.host import host_copy
from ..catalogue.reduction import unit_rows, viewed
from ..errors import CertificationError
from ..gluon import saving
from ..gluon.attachment import constraint_of, reduction_of
from .lipschitz import lipschitz_bound

__all__ = ["ConstraintReport", "report", "export", "AT_BOUND_RTOL", "REPORT_SUFFIX"]

#: A unit is "at the bound" when its norm is at least ``bound * (1 - AT_BOUND_RTOL)``.
AT_BOUND_RTOL = 1e-3

COLUMNS = (("constraint", "constraint"), ("bound", "bound"), ("units", "units"), ("max_norm", "largest unit norm"),
           ("mean_norm", "mean unit norm"), ("at_bound", "units at the bound"), ("violation", "worst violation"))


class ConstraintReport(dict):
    """A :func:`report`: a dict ``{"parameters": {name: fields}, "lipschitz_bound": float or None,
    "lipschitz_note": str}`` that also writes itself as Markdown (:meth:`markdown`) and JSON
    (:meth:`json`)."""

    def markdown(self) -> str:
        """The report as a Markdown section: one table row per constrained parameter."""
        lines = ["## Weight constraints", "",
                 "| parameter | " + " | ".join(title for _, title in COLUMNS) + " |",
                 "|---" * (len(COLUMNS) + 1) + "|"]
        for name, fields in self["parameters"].items():
            cells = [_cell(key, fields[key]) for key, _ in COLUMNS]
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
        lines += ["", f"Lipschitz bound of the network (L2): {_cell('bound', self['lipschitz_bound'])}"
                      f" ({self['lipschitz_note']})."]
        return "\n".join(lines) + "\n"

    def json(self, **kwargs: Any) -> str:
        """The report as JSON text (``kwargs`` go to ``json.dumps``, e.g. ``indent=2``); numbers
        that are not finite (NaN weights) are written as null, which strict parsers accept."""
        return json.dumps(_finite(self), allow_nan=False, **kwargs)


def report(net: Any, input_shape: Optional[Sequence[int]] = None) -> ConstraintReport:
    """Each constrained parameter of ``net`` against its constraint, and the network's Lipschitz
    bound.

    Per parameter (its first context's copy): the constraint (serialized), its ``bound`` (the
    constraint's ``max_value`` on each unit's norm; None for a family without one and for the
    whole-matrix families, SpectralNorm and OperatorNorm, whose bound is on another norm), the number of units (the
    slices the constraint reduces over: a Dense row, a convolution filter), the largest and the
    mean unit L2 norm, the fraction of units at the bound (norm at least ``bound * (1 -
    AT_BOUND_RTOL)``; None without a bound), and the worst violation: ``max |P(w) - w| / max
    |w|``, how far projecting would move the weight relative to its largest entry (0 when it lies
    in its set, as ``verify_constraints`` measures it).

    Parameters
    ----------
    net : Block
        An initialized network with constraints attached.
    input_shape : sequence of int or None
        The shape of one batch of input: the report then includes ``gc.lipschitz_bound(net,
        input_shape)``; None, or a network it cannot bound, gives None and says why in
        ``lipschitz_note``.

    Returns
    -------
    ConstraintReport
        A dict; ``.markdown()`` and ``.json()`` write it out.

    Examples
    --------
    >>> net = gc.nn.Dense(3, in_units=4, weight_constraint=gc.MaxNorm(2.0))
    >>> net.initialize(mx.init.Constant(1.0))                 # every row's norm is 2
    >>> fields = gc.report(net)["parameters"][net.weight.name]
    >>> fields["max_norm"], fields["at_bound"], fields["violation"]
    (2.0, 1.0, 0.0)
    """
    parameters: Dict[str, Dict[str, Any]] = {}
    for param in net.collect_params().values():
        constraint = constraint_of(param)
        if constraint is not None:
            parameters[param.name] = _fields(param, constraint)
    bound, note = None, "no input shape given"
    if input_shape is not None:
        try:
            bound = lipschitz_bound(net, input_shape).bound
            note = f"gc.lipschitz_bound for input shape {tuple(input_shape)}"
        except CertificationError as error:
            note = f"not certified: {error}"
    return ConstraintReport(parameters=parameters, lipschitz_bound=bound, lipschitz_note=note)


def _fields(param: Any, constraint: Any) -> Dict[str, Any]:
    weight = param.data(param.list_ctx()[0])
    reduction = constraint.reduction_for(weight.shape, reduction_of(param, weight.shape))
    values = viewed(host_copy(weight).astype(np.float64), reduction)
    rows, _ = unit_rows(values, reduction.axes)
    norms = np.sqrt((rows * rows).sum(axis=1))
    # a bound on each unit's norm; a whole-matrix family's (SpectralNorm, OperatorNorm) bounds
    # another norm, which the unit norms do not show: no "at the bound" for those
    bound = constraint.get_config().get("max_value") if constraint.locality != WHOLE else None
    projected = constraint(weight, reduction_of(param, weight.shape)).asnumpy().astype(np.float64)
    projected = viewed(projected, reduction)
    scale = max(float(np.abs(values).max(initial=0.0)), float(np.finfo(np.float64).tiny))
    return {"constraint": serialize(constraint), "bound": bound, "units": int(len(norms)),
            "max_norm": float(norms.max(initial=0.0)), "mean_norm": float(norms.mean()) if len(norms) else 0.0,
            "at_bound": None if bound is None else float(np.mean(norms >= bound * (1 - AT_BOUND_RTOL))),
            "violation": float(np.abs(projected - values).max(initial=0.0)) / scale}


def _finite(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by None."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "constraint":
        config = ", ".join(f"{k}={v!r}" for k, v in value["config"].items())
        return f"`{value['class_name']}({config})`"
    if key == "at_bound":
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)



def export(net: Any, path: str, epoch: int = 0, input_shape: Optional[Sequence[int]] = None) -> str:
    """``net.export(path, epoch)``, the network's constraints and their report written beside
    the model.

    Writes ``path-symbol.json``, ``path-%04d.params``, ``path-constraints.json`` (what
    ``gc.imports`` reads back) and ``path-constraints.md``: :func:`report` as a Markdown section
    for the model card.

    Parameters
    ----------
    net : HybridBlock
        A hybridized network that has run a forward pass (as ``HybridBlock.export`` needs).
    path : str
        The prefix of the files.
    epoch : int, default 0
        The epoch number in the parameter file's name.
    input_shape : sequence of int or None
        Given, the report includes the network's Lipschitz bound for inputs of this shape.

    Returns
    -------
    str
        The path of the constraints file.
    """
    written = saving.export(net, path, epoch)
    Path(f"{path}{REPORT_SUFFIX}").write_text(report(net, input_shape).markdown())
    return written


#: The suffix of the report file ``gc.export`` writes beside the model.
REPORT_SUFFIX = "-constraints.md"
