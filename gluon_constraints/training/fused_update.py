"""The fused update: one kernel call that updates a step's weights and projects them.

Given an optimizer's rule (:mod:`.update_rules`) and the arrays of one step, :func:`update_entry`
says how each weight enters the call (its unit group, the state arrays the kernel updates) or
that the kernel cannot take it, and :func:`run_fused_update` queues the call. The kernel computes
MXNet's update term for term, then each unit's projection while the unit is in cache.
"""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Sequence

from ..kernels.boundary import Rates, UnitGroup, UpdateRule, kernel_can_take, unit_group
from ..kernels.projection import leading_rows, unit_groups
from .update_rules import FusedRule, kernel_states

__all__ = ["UpdateEntry", "update_entry", "run_fused_update"]


class UpdateEntry(NamedTuple):
    """How one weight enters a fused update call: its unit group (mode ``"none"`` where it is
    not projected), the optimizer state arrays the kernel updates, and whether it is a filter
    bank (above 2-D, which MKL-DNN may hold in its blocked layout)."""

    group: UnitGroup
    states: List[Any]
    bank: bool


def update_entry(kernel: Any, rule: FusedRule, weight: Any, grad: Any, state: Any, projection: Optional[Any],
                 monitored: bool = False) -> Optional[UpdateEntry]:
    """How ``weight`` enters a fused update call of ``kernel``, or None if it cannot update it.

    The kernel does exactly what the optimizer's ``update_multi_precision`` (the update ``rule``
    names) followed by the projection would. It does not cover sparse gradients or states,
    anything but float32 on the CPU, weights whose units are not runs of contiguous elements in
    a ``(groups, runs, units_per_group, run_length)`` view, and constraints it does not compute.

    Parameters
    ----------
    kernel : Kernel or None
        The loaded kernel (None: no fused update).
    rule : FusedRule
        The update, from :func:`~.update_rules.rule_of`.
    weight, grad, state
        The parameter's arrays in an update call.
    projection : Projection or None
        Its projection (constraint, reduction, shape), None if it is not projected this step.
    monitored : bool, default False
        Whether the call also writes the weight's statistics.
    """
    states = kernel_states(rule, state)
    if kernel is None or grad.stype != "default" or not kernel_can_take(weight) or states is None:
        return None
    group = unit_group(leading_rows(weight.shape), "none")
    if projection is not None:
        groups = unit_groups(weight, projection.constraint, projection.reduction, monitored)
        if groups is None or len(groups) != 1:
            return None
        group = groups[0]
    return UpdateEntry(group, states, weight.ndim > 2)


def run_fused_update(kernel: Any, settings: UpdateRule, rates: Sequence[Rates], weights: Sequence[Any],
                     grads: Sequence[Any], entries: Sequence[UpdateEntry],
                     first_filters: Sequence[Any] = (), stats: Sequence[Any] = ()) -> None:
    """Queue one call of ``kernel`` that updates ``weights`` as ``settings`` say (an optimizer's
    rule, :meth:`~.update_rules.FusedRule.settings`) and projects each, with ``rates`` from
    :func:`~.update_rules.step_rates`.

    ``first_filters``: one-filter views of the filter banks to multiply by 1 first
    (:func:`~gluon_constraints.kernels.projection.first_filter`: a weight MKL-DNN holds in its
    blocked layout is then plain for the kernel); ``stats``: one float32 array of 3 per weight
    to receive its statistics.
    """
    arrays: List[Any] = []
    for weight, grad, entry in zip(weights, grads, entries):
        arrays += [weight, grad, *entry.states]
    for first in first_filters:
        first *= 1.0
    kernel.update(settings, [entry.group for entry in entries], rates, arrays, stats)
