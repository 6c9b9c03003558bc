"""A warning when a constraint fights the learning rate: most units moved on most steps.

With monitoring on, every projection records the fraction of units it moved (device arrays).
A :class:`ClippingWatch` adds up, on the device, how many of a window's steps moved more than
``fraction`` of each parameter's units, and reads a window's counts only when the next window
ends, by which time the device has long computed them, so it never waits for the device. A
parameter whose count is above half the window gets one :class:`~gluon_constraints.ClippingWarning`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, Iterable, Optional, Set, Tuple

from ..errors import ClippingWarning, ConstraintArgumentError

__all__ = ["ClippingWatch", "clipping_watch"]


class ClippingWatch:
    """Counts, per parameter index, the steps of the current window whose projection moved more
    than ``fraction`` of the units, and warns once per parameter about a window where that was
    most of the steps.

    Parameters
    ----------
    fraction : float
        The share of units (0 to 1) above which a step counts.
    window : int
        The number of steps per window.
    """

    def __init__(self, fraction: float, window: int) -> None:
        self.fraction, self.window = fraction, window
        self.steps = 0
        self.counts: Dict[int, Any] = {}
        self.finished: Dict[int, Any] = {}
        self.warned: Set[int] = set()

    def observe(self, moved: Iterable[Tuple[int, Any]], names: Dict[int, str]) -> None:
        """Count one step: ``moved`` pairs a parameter index with its statistics buffer (whose
        entry 0 is the fraction of units the last projection moved). At a window's end, read
        the previous window's counts and warn."""
        for index, buffer in moved:
            if index in self.warned:
                continue
            hit = buffer[0:1] > self.fraction
            self.counts[index] = hit if index not in self.counts else self.counts[index] + hit
        self.steps += 1
        if self.steps % self.window:
            return
        finished, self.finished, self.counts = self.finished, self.counts, {}
        for index, count in finished.items():
            steps = int(count.asscalar())
            if steps > self.window / 2 and index not in self.warned:
                self.warned.add(index)
                warnings.warn(
                    f"The constraint on '{names.get(index, index)}' moved more than {self.fraction:.0%} of its "
                    f"units on {steps} of {self.window} steps (steps {self.steps - 2 * self.window + 1} to "
                    f"{self.steps - self.window}): the updates keep pushing the weights out of their set, and "
                    f"units held at the bound can stop learning (ReLUs die). Lower the learning rate or "
                    f"raise the bound; ConstrainedTrainer(..., clip_warning=None) turns this warning off.",
                    ClippingWarning, stacklevel=5)


def clipping_watch(fraction: Any, window: Any) -> Optional[ClippingWatch]:
    """A :class:`ClippingWatch` for a trainer's ``clip_warning`` and ``clip_window`` arguments
    (None: no watch).

    Raises
    ------
    ConstraintArgumentError
        If ``fraction`` is not None or a number in [0, 1), or ``window`` not an int >= 1.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConstraintArgumentError(f"clip_window must be an int >= 1 (steps per window): got {window!r}.")
    if fraction is None:
        return None
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1 \
            or math.isnan(fraction):
        raise ConstraintArgumentError(
            f"clip_warning must be None (off) or the share of units in [0, 1) above which a step counts: "
            f"got {fraction!r}.")
    return ClippingWatch(float(fraction), window)
