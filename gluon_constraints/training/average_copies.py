"""The averages of a network's device copies, and which of them need not be computed.

A :class:`~.averaging.WeightAverage` keeps one average per parameter copy. When the trainer
updates on the kvstore, it pulls every copy of a trained parameter from one updated array, so
the copies are equal after each step; where their averages are equal too, averaging the later
copies would only repeat the first copy's work. :class:`AverageCopies` holds the averages and
the bookkeeping that avoids it:

- a later copy's average is compared with its first copy's once (one wait for the devices),
  when the trainer first keeps their weights equal; found equal, it is *left*: not computed
  while the trainer keeps the weights equal, and copied from the first copy's average when read
  (until then it is *stale*); found different (edited apart, trained apart), it is computed on
  its own device from then on;
- a copy the network no longer holds (``reset_ctx`` to some of its contexts) keeps its average,
  and a copy that comes back takes the average of a copy held when last looked at (one held
  now, else one it moved from), as ``reset_ctx`` gives it that copy's weights.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, FrozenSet, List, Set, Tuple

import numpy as np
from mxnet import context as mx_context
from mxnet import ndarray as nd

__all__ = ["Key", "Entry", "AverageCopies"]

Key = Tuple[str, str]               # an average's (structural name, context)
Entry = Tuple[Key, Any, Any, Any]   # its key, the average, the weight it follows, the parameter


class AverageCopies:
    """The averages, ``{key: array}`` in :attr:`arrays` (a parameter's copies in the order of
    its contexts when made), with which later copies are left equal to their first copy's."""

    def __init__(self, arrays: Dict[Key, Any]) -> None:
        self.arrays = arrays
        self._equal_to: Dict[Key, Key] = {}  # left: equal to the average of the copy named
        self._stale: Set[Key] = set()        # left and not copied since
        self._unequal: Set[Key] = set()      # compared and found different
        self._absent: Set[Key] = set()       # copies the network did not hold when last looked at

    def step(self, entries: List[Entry], equal: FrozenSet[int], run: Callable[[List[Entry]], None]) -> None:
        """One averaging step: ``run`` the entries that are computed, leave the others.

        Of a parameter whose id is in ``equal`` (its copies equal now), a later copy's average
        found equal to the first copy's is left; every other average is computed (brought up to
        date first where it was left); a later copy of a parameter in ``equal`` not compared
        yet is compared after the step."""
        firsts: Dict[str, Key] = {}
        for key, *_ in entries:  # a parameter's copies in order
            firsts.setdefault(key[0], key)
        later = [key for key, _, _, param in entries if id(param) in equal and firsts[key[0]] != key]
        left = {key for key in later if self._equal_to.get(key) == firsts[key[0]]}
        dropped = set(self._equal_to) - left  # their copies were not kept equal to the first this time
        self.catch_up(dropped & self._stale)
        for key in dropped:
            del self._equal_to[key]
        run([entry for entry in entries if entry[0] not in left])
        self._stale |= left
        self._compare({key: firsts[key[0]] for key in later if key not in left and key not in self._unequal})

    def catch_up(self, keys: Set[Key]) -> None:
        """Copy into each of ``keys`` (stale averages) the average it equals."""
        for key in keys:
            self.arrays[self._equal_to[key]].copyto(self.arrays[key])
        self._stale -= keys

    def up_to_date(self) -> Dict[Key, Any]:
        """:attr:`arrays`, every stale average copied first."""
        self.catch_up(set(self._stale))
        return self.arrays

    def first(self, key: Key) -> Any:
        """The average ``key`` up to date."""
        self.catch_up({key} & self._stale)
        return self.arrays[key]

    def forget(self) -> None:
        """After every average was written alike (loaded, or copied from the weights): compare
        the copies again before leaving any."""
        self._equal_to.clear()
        self._stale.clear()
        self._unequal.clear()

    def take_back(self, held: List[Tuple[Key, Any, Any]]) -> None:
        """Given the copies the network ``held`` now (keys first), give each copy that came back
        the average of a copy held when last looked at (one held now, else one it moved from),
        and note the copies not held."""
        present = {key for key, *_ in held}
        for key in present & self._absent:
            kept = [k for k in self.arrays if k[0] == key[0] and k not in self._absent]
            source = next((k for k in kept if k in present), kept[0] if kept else None)
            if source is not None:
                self.catch_up({source} & self._stale)
                self.arrays[source].copyto(self.arrays[key])
                self._equal_to.pop(key, None)
                self._stale.discard(key)
                self._unequal.discard(key)
        self._absent = set(self.arrays) - present

    def _compare(self, pairs: Dict[Key, Key]) -> None:
        """Compare each average ``key`` with its first copy's average ``pairs[key]`` (one wait
        for the devices): those equal are left from now on, the others computed."""
        if not pairs:
            return
        host = mx_context.cpu()
        differences = nd.concat(*[(self.arrays[key] != self.arrays[first].as_in_context(
            self.arrays[key].context)).astype(np.float32).sum().reshape((1,)).as_in_context(host)
            for key, first in pairs.items()], dim=0).asnumpy()  # float32 counts: averages may mix types
        for (key, first), different in zip(pairs.items(), differences):
            if different:
                self._unequal.add(key)
            else:
                self._equal_to[key] = first
