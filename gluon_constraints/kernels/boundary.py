"""The typed boundary to the C++ kernels, and what they can take.

The kernels (``project_rows.cc``) receive arrays of three structs, declared here with ctypes under
the names and field names they have there (a test compares every size and offset with the
library's own, ``gc_layout``):

- :class:`UnitGroup` (``gc_unit_group``): one weight's units and what to do to them. The weight
  is viewed as ``(groups, runs, units_per_group, run_length)``; unit ``(g, u)`` is the slice
  ``[g, :, u, :]``, ``runs`` runs of ``run_length`` contiguous elements (``run_length`` follows
  from the weight's size). Rows are ``(units, 1, 1)``, a transposed convolution's output
  channels ``(1, in, out)``. ``mode`` and the band: see :data:`MODES`;
- :class:`UpdateRule` (``gc_update_rule``): the optimizer update fused in front of the
  projection (:data:`RULES`), ``background`` (1: the call runs on MXNet's prioritized CPU
  workers at the lowest priority, beside the operators queued after it that only read its
  inputs, as a weight average's step can; 0: on its context's worker, as MXNet's operators do),
  ``rescale_grad``, ``clip_gradient`` (negative: none) and the rule's hyperparameters
  ``h1, h2, h3``;
- :class:`Rates` (``gc_rates``): one weight's learning rate and weight decay for a step.

:func:`kernel_can_take` is the one place that says which arrays the kernels compute on.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any, Dict

import numpy as np

__all__ = ["UnitGroup", "UpdateRule", "Rates", "MODES", "RULES", "NORM_ORDERS", "unit_group",
           "kernel_can_take"]

#: ``mode`` values: ``"norm"`` rescales a unit whose norm lies outside ``[lo, hi]`` (within
#: ``rtol``) by ``rate * t / n + (1 - rate)``; ``"nonneg"`` is ``w * (w >= 0)`` and ``"clip"``
#: ``min(max(w, lo), hi)``, elementwise; ``"none"`` leaves the weight alone (an update only).
MODES: Dict[str, int] = {"norm": 0, "nonneg": 1, "clip": 2, "none": 3}
#: ``rule`` values: MXNet's ``sgd_update`` (``"sgd"``; a weight average's step is this rule),
#: ``sgd_mom_update``, ``nag_mom_update``, ``adam_update`` and ``rmsprop_update``
#: (``gc_update``); the lazy updates of the rows a row-sparse gradient has, of ``sgd_update``,
#: ``sgd_mom_update``, ``adam_update`` and the sparse ``adagrad_update`` on a dense weight, and
#: ``"none"``, no update (``gc_touched_rows``).
RULES: Dict[str, int] = {"sgd_mom": 0, "nag_mom": 1, "adam": 2, "rmsprop": 3, "sgd_lazy": 4,
                         "sgd_mom_lazy": 5, "adam_lazy": 6, "adagrad_lazy": 7, "none": 8, "sgd": 9}
#: ``norm_order`` values by norm order: 1, 2, and 0 for the max norm.
NORM_ORDERS: Dict[float, int] = {1: 1, 2: 2, math.inf: 0}


class UnitGroup(ctypes.Structure):
    """``gc_unit_group``: one weight's unit layout, mode and band."""

    _fields_ = [("groups", ctypes.c_int64), ("runs", ctypes.c_int64), ("units_per_group", ctypes.c_int64),
                ("mode", ctypes.c_int32), ("norm_order", ctypes.c_int32),
                ("lo", ctypes.c_double), ("hi", ctypes.c_double), ("rate", ctypes.c_double),
                ("rtol", ctypes.c_double)]


class UpdateRule(ctypes.Structure):
    """``gc_update_rule``: the update, its gradient settings and hyperparameters."""

    _fields_ = [("rule", ctypes.c_int32), ("background", ctypes.c_int32),
                ("rescale_grad", ctypes.c_double), ("clip_gradient", ctypes.c_double),
                ("h1", ctypes.c_double), ("h2", ctypes.c_double), ("h3", ctypes.c_double)]


class Rates(ctypes.Structure):
    """``gc_rates``: a weight's learning rate and weight decay for one step."""

    _fields_ = [("lr", ctypes.c_double), ("wd", ctypes.c_double)]


def unit_group(layout: Any, mode: str, lo: float = 0.0, hi: float = 0.0, rate: float = 1.0,
               rtol: float = 0.0, order: float = 2) -> UnitGroup:
    """The :class:`UnitGroup` of a weight whose units lie in ``layout``
    ``(groups, runs, units_per_group)``."""
    groups, runs, units_per_group = layout
    return UnitGroup(groups, runs, units_per_group, MODES[mode], NORM_ORDERS[order], lo, hi, rate, rtol)


def kernel_can_take(array: Any) -> bool:
    """Whether the kernels compute on ``array``: a dense float32 array of a CPU context.

    (The library checks the rest when a call runs: the array must also be in the plain layout,
    which MKL-DNN's blocked layout is not, and compact.)
    """
    return (array.dtype == np.float32 and array.stype == "default"
            and array.context.device_type in ("cpu", "cpu_pinned"))
