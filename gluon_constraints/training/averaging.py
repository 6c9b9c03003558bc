"""``gc.WeightAverage``: exponential moving averages (EMA) and stochastic weight averages (SWA) of
a network's weights that stay inside their constraints.

The averages live beside the weights, one per parameter and device copy (float32 for float16
weights), and are updated on the engine like the training step, so nothing waits for the device:
by the fused kernel where it can take them, one pass that moves each average and projects it
while it is in cache, queued in the background to run beside the next step's forward pass
(:mod:`.average_step`), else by MXNet's operators. After each update every
constrained parameter's averages are projected onto its constraint set, as the weights are after
each step: for a convex set (MaxNorm, NonNeg, Clip, ...) an average of feasible weights is
feasible already and the projection leaves it as it is (up to rounding), for a set that is not
convex (UnitNorm, Orthogonal, MinMaxNorm with a lower bound) the average falls inside it and is
moved back onto it.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Tuple

import numpy as np
from mxnet import ndarray as nd

from .. import _mxnet_compat as compat
from ..errors import ConstraintArgumentError, ConstraintTypeError, EnforcementError
from ..gluon.attachment import reduction_of
from ..kernels.projection import project_in_place
from .average_copies import AverageCopies, Entry, Key
from .average_step import AverageStep, in_force
from .trainer import STATE

__all__ = ["WeightAverage"]

MODES = ("ema", "swa")
REALS = (int, float, np.integer, np.floating)  # numpy's scalars too


class WeightAverage:
    """Averages of a network's weights (EMA or SWA), projected onto their constraints.

    EMA (``mode="ema"``): after updates ``t = every, 2 every, ...``, for every parameter ``w``::

        avg <- d_t^every * avg + (1 - d_t^every) * w,
        d_t = decay, or min(decay, (1 + t) / (10 + t)) with warmup

    starting from the weights when the average is created (the warm-up of TensorFlow's
    ``ExponentialMovingAverage(num_updates=)``: early averages follow the weights closely).
    ``every > 1`` (timm's ``ModelEmaV3`` does the same) costs ``1 / every`` of the per-step
    update, which reads the average and the weight and writes the average (one fused kernel
    pass where the kernel is loaded, which runs beside the next step's forward pass): 0-3% of
    a small-batch step when updated every step on our 2-core machine (next to nothing where the
    step leaves a core idle), more on a machine with a smaller cache, about a tenth of that
    every 10 steps (docs/benchmarks.md).

    SWA (``mode="swa"``, Izmailov et al. 2018): the equal-weight mean of the weights at updates
    ``start``, ``start + every``, ``start + 2 every``, ...::

        n <- n + 1,   avg <- avg + (w - avg) / n

    (before ``start`` the averages are the weights themselves).

    With a trainer that updates on the kvstore (the default on several devices), every device
    copy of a trained parameter is pulled from one updated array after each step, so the copies
    are equal. Where their averages are equal too (compared once, with one wait for the
    devices, after the first such step), only the first copy's is computed, and it is copied
    into the others when they are read (:attr:`averages`, :meth:`swap`): the per-step cost of one
    device. Averages that can differ (BatchNorm's running statistics, which each device computes
    from its part of the batch; copies edited apart; any copy with ``update_on_kvstore=False``,
    without an attached trainer, or averaged by a call of :meth:`update`) are computed each on
    its own device.

    After each update the averages of constrained parameters are projected onto their sets, so
    evaluating with them never sees an infeasible weight. BatchNorm's running mean and variance
    are parameters too and are averaged like the weights (as timm's ``ModelEmaV2`` does); for
    SWA, where a mean of running statistics is not the statistics of the mean network,
    recompute them with a pass over training data in training mode after :meth:`copy_to` if it
    matters to you.

    Parameters
    ----------
    net : Block
        The network (initialized); all its parameters are averaged, on every context.
    decay : float, default 0.999
        EMA's decay, in [0, 1).
    mode : {"ema", "swa"}, default "ema"
    warmup : bool, default False
        EMA: use ``min(decay, (1 + t) / (10 + t))``.
    start : int, default 1
        SWA: the first update averaged.
    every : int, default 1
        The interval between averaged updates (SWA: from ``start``; EMA: from the first).
    trainer : ConstrainedTrainer or None, default None
        A trainer that enforces constraints (``gc.ConstrainedTrainer`` or ``gc.enforce``): it
        then updates the averages after each of its steps. Without one, call :meth:`update`
        after each ``trainer.step``.

    Examples
    --------
    >>> net = gc.nn.Dense(2, in_units=3, weight_constraint=gc.MaxNorm(1.0))
    >>> net.initialize()
    >>> trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    >>> ema = gc.WeightAverage(net, decay=0.99, trainer=trainer)
    >>> with ema.swapped():                 # the network holds the averages here
    ...     scores = net(mx.nd.ones((1, 3)))
    """

    def __init__(self, net: Any, decay: float = 0.999, mode: str = "ema", warmup: bool = False,
                 start: int = 1, every: int = 1, trainer: Any = None) -> None:
        if mode not in MODES:
            raise ConstraintArgumentError(f"WeightAverage mode must be 'ema' or 'swa': got {mode!r}.")
        if isinstance(decay, bool) or not isinstance(decay, REALS) or not 0 <= decay < 1:
            raise ConstraintArgumentError(f"WeightAverage decay must be a number in [0, 1): got {decay!r} "
                                          f"({type(decay).__name__}).")
        for name, value in (("start", start), ("every", every)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConstraintArgumentError(f"WeightAverage {name} must be an int >= 1: got {value!r} "
                                              f"({type(value).__name__}).")
        if not isinstance(warmup, bool):
            raise ConstraintArgumentError(f"WeightAverage warmup must be True or False: got {warmup!r}.")
        self.decay: float = float(decay)
        self.mode, self.warmup = mode, warmup
        self.start: int = int(start)
        self.every: int = int(every)
        self.names = _parameters(net)  # every structural name, shared parameters under each of theirs
        sparse = [name for name, param in self.names.items() if compat.storage_type(param) == "row_sparse"]
        if sparse:
            raise ConstraintTypeError(
                f"WeightAverage averages dense weights: parameters {sparse} are row-sparse (a SparseEmbedding's "
                f"weight lives whole only in the kvstore; each device holds the last batch's rows). Use "
                f"nn.Embedding(sparse_grad=True), whose weight is dense and whose gradient is row-sparse.")
        self.params = _unique(self.names)  # one entry per Parameter object: one average each
        self._named: Dict[str, List[Tuple[Key, Any, Any]]] = {}  # by name, _copies_now's entries
        # one average per copy, and which later copies' averages need not be computed
        self._copies = AverageCopies({(name, str(data.context)): data.astype(_average_dtype(data.dtype), copy=True)
                                      for name, param in self.params.items() for data in _copies(param)})
        self.updates = 0      # updates seen
        self.averaged = 0     # SWA: weights averaged so far
        self._backup: Optional[Dict[Key, Any]] = None
        self._step = AverageStep()  # an update's step, fused into one kernel call where it can be
        self._trained_by: Optional[Any] = None
        self._project()       # initial weights may lie outside their sets (before the first step)
        if trainer is not None:
            _attach(trainer, self)
            self._trained_by = weakref.ref(trainer)

    @property
    def averages(self) -> Dict[Key, Any]:
        """The averages, ``{(structural name, context): array}``, one per device copy, up to
        date (those equal to their first copy's are copied from it now): read them through this
        property after a step, as an array of a later copy held from before may not be updated."""
        self._copies.take_back([entry for entry in self._copies_now() if entry[0] in self._copies.arrays])
        return self._copies.up_to_date()

    # -- updating ---------------------------------------------------------------------------------
    def update(self) -> None:
        """Average the current weights in (one update), then project the constrained averages.
        Queued on MXNet's engine: no host synchronisation (except where a constraint computes on
        the host, as ``OperatorNorm`` does).

        Raises
        ------
        EnforcementError
            If the averages are swapped in, or a parameter moved to a context it has no average
            on (``reset_ctx``); nothing is changed.
        """
        self._update(frozenset())

    def after_step(self) -> None:
        """:meth:`update`, called by the attached trainer right after its step: a parameter
        whose device copies it has just pulled from one kvstore array, and whose averages were
        equal, has its average computed once and copied to its other copies when read."""
        self._update(self._equal_copies())

    def _update(self, equal: FrozenSet[int]) -> None:
        """One update; ``equal``: the ids of the parameters whose copies are equal now."""
        self.check_not_swapped("WeightAverage.update()")
        entries = self._entries()  # raises, changing nothing, where a parameter moved contexts
        self.updates += 1
        if self.mode == "ema":
            if self.updates % self.every:
                return
            decay = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
            self._average(1.0 - decay ** self.every, entries, equal)
        elif self.updates >= self.start and (self.updates - self.start) % self.every == 0:
            self.averaged += 1
            self._average(1.0 / self.averaged, entries, equal)
        elif self.averaged == 0:  # before start: the weights themselves
            for _, average, weight, _ in entries:
                weight.astype(average.dtype, copy=False).copyto(average)
            self._copies.forget()
            self._project()

    def _average(self, rate: float, entries: List[Entry], equal: FrozenSet[int]) -> None:
        """Move the averages toward their weights by ``rate`` and project them; of a parameter
        in ``equal`` (copies equal now), later copies' averages equal to the first's are left
        (:class:`~.average_copies.AverageCopies`)."""
        self._copies.step(entries, equal, lambda computed: self._step.run(rate, computed, self.updates))

    def _equal_copies(self) -> FrozenSet[int]:
        """The ids of the parameters whose device copies the attached trainer has just made
        equal: those it trains while it updates on the kvstore, which computes one update and
        pulls it into every copy. (BatchNorm's running statistics, which each device computes
        from its own part of the batch, are not trained.)"""
        trainer = self._trained_by() if self._trained_by is not None else None
        if trainer is None or not compat.updates_on_kvstore(trainer):
            return frozenset()
        return frozenset(id(p) for p in compat.trainer_parameters(trainer) if p.grad_req != "null")

    def check_not_swapped(self, what: str) -> None:
        """Raise :class:`~gluon_constraints.EnforcementError` if the averages are swapped in (the
        network holds them, not the trained weights): ``what`` would train or average them."""
        if self._backup is not None:
            raise EnforcementError(f"{what} while the averages are swapped in: swap back first (the network "
                                   f"holds the averages, not the trained weights). Nothing was changed.")

    def _entries(self) -> List[Entry]:
        """Each average's key, the average, the weight it follows and its parameter.

        A parameter may move to some of its contexts (``reset_ctx``): the averages of the others
        are kept as they were, and a copy that comes back takes the average of a copy that
        stayed, or else of one it moved from (``reset_ctx`` gives it that copy's weights).

        Raises
        ------
        EnforcementError
            If a parameter now lives on a context it had no average on (``reset_ctx`` after the
            average was made); nothing is changed.
        """
        entries = self._copies_now()
        averages = self._copies.arrays
        moved = sorted({key[0] for key, _, _ in entries if key not in averages})
        if moved:
            held = sorted({context for _, context in averages})
            raise EnforcementError(
                f"WeightAverage: parameters {moved} now live on contexts the averages are not on "
                f"({', '.join(held)}): the network moved (reset_ctx) after the average was made. Move it back, "
                f"or make a new WeightAverage. Nothing was changed.")
        self._copies.take_back(entries)
        return [(key, averages[key], data, param) for key, data, param in entries]

    def _copies_now(self) -> List[Tuple[Key, Any, Any]]:
        """Each parameter copy's key, data and parameter, as the network holds them now (each
        parameter's kept while its copies are the same arrays: reading a context costs a call
        into MXNet, and this runs at every step)."""
        now: List[Tuple[Key, Any, Any]] = []
        for name, param in self.params.items():
            copies = _copies(param)
            kept = self._named.get(name)
            if kept is None or len(kept) != len(copies) or any(k[1] is not d for k, d in zip(kept, copies)):
                kept = self._named[name] = [((name, str(data.context)), data, param) for data in copies]
            now += kept
        return now

    def _project(self) -> None:
        project_in_place([(average, constraint, reduction_of(param, average.shape))
                          for _, average, _, param in self._entries()
                          for constraint in [in_force(param, self.updates)] if constraint is not None])

    # -- using the averages -----------------------------------------------------------------------
    def swap(self) -> None:
        """Put the averages into the network (keeping its weights aside), or, called again, put
        the weights back, bit for bit. The averages themselves are not changed."""
        entries = self._entries()  # raises, changing nothing, where a parameter moved contexts
        self._copies.up_to_date()
        if self._backup is None:
            backup = {key: data.copy() for key, _, data, _ in entries}
            for _, average, data, _ in entries:
                average.astype(data.dtype, copy=False).copyto(data)
            self._backup = backup
        else:
            backup = self._backup
            for key, _, data, _ in entries:  # a copy reset_ctx made since: its parameter's weights
                saved = backup[key] if key in backup else next(v for k, v in backup.items() if k[0] == key[0])
                saved.copyto(data)
            self._backup = None

    @contextlib.contextmanager
    def swapped(self) -> Iterator["WeightAverage"]:
        """``with averages.swapped():`` evaluates with the averages and restores the weights."""
        self.swap()
        try:
            yield self
        finally:
            self.swap()

    def copy_to(self, net: Any) -> None:
        """Write the averages (of the first context) into ``net``'s parameters, matched by
        structural name (``"0.weight"``) and shape, on every context ``net`` holds them."""
        self._entries()  # raises where the network moved; a copy that came back takes its average
        targets = compat.structural_parameters(net)
        missing = sorted(set(self.names) - set(targets))
        if missing:
            raise ConstraintTypeError(f"copy_to: the network has no parameters named {missing} "
                                      f"(structural names); it must have the averaged network's structure.")
        for name, param in self.names.items():  # every shape checked before anything is written
            if tuple(targets[name].shape) != tuple(param.shape):
                raise ConstraintTypeError(f"copy_to: parameter '{name}' has shape {targets[name].shape}, the "
                                          f"average {param.shape}. Nothing was written.")
        for name, param in self.names.items():
            targets[name].set_data(self._average_of(param).astype(targets[name].dtype, copy=False))

    def save_parameters(self, filename: str) -> None:
        """Save the averages as ``net.save_parameters`` would save the network holding them
        (load them with ``net.load_parameters``)."""
        self._entries()  # raises where the network moved; a copy that came back takes its average
        nd.save(filename, {name: self._average_of(param).astype(param.dtype, copy=False)
                           for name, param in self.names.items()})

    def save(self, filename: str) -> None:
        """Save the averages (of each parameter's first copy: averages that differ per device,
        BatchNorm's running statistics, keep the first device's) and their counters, to resume
        with :meth:`load`."""
        self._entries()  # raises where the network moved; a copy that came back takes its average
        state = {f"average:{name}": self._first(name, param) for name, param in self.params.items()}
        state["counters"] = nd.array([self.updates, self.averaged], dtype=np.float64)
        nd.save(filename, state)

    def load(self, filename: str) -> None:
        """Load what :meth:`save` wrote into every context's averages."""
        state = nd.load(filename)
        names = {key[len("average:"):] for key in state if key.startswith("average:")}
        if names != set(self.params) or "counters" not in state:
            raise ConstraintTypeError(f"{filename} holds averages of other parameters: {sorted(names)} "
                                      f"for {sorted(self.params)}.")
        for (name, _), average in self._copies.arrays.items():
            state[f"average:{name}"].astype(average.dtype, copy=False).copyto(average)
        self._copies.forget()
        self.updates, self.averaged = (int(v) for v in state["counters"].asnumpy())

    def _first(self, name: str, param: Any) -> Any:
        """The average of ``param``'s first copy (brought up to date if left behind)."""
        return self._copies.first((name, str(_copies(param)[0].context)))

    def _average_of(self, param: Any) -> Any:
        """The first context's average of ``param`` (kept under its first structural name)."""
        name = next(n for n, p in self.params.items() if p is param)
        return self._first(name, param)


def _unique(params: Dict[str, Any]) -> Dict[str, Any]:
    """``params`` without the later names of a parameter that several layers share."""
    unique: Dict[str, Any] = {}
    for name, param in params.items():
        if not any(param is kept for kept in unique.values()):
            unique[name] = param
    return unique


def _copies(param: Any) -> List[Any]:
    """A parameter's device copies (every averaged parameter has them: checked at creation)."""
    copies = compat.data_arrays(param)
    if copies is None:
        raise ConstraintTypeError(f"WeightAverage: parameter '{param.name}' has no data any more.")
    return list(copies)


def _parameters(net: Any) -> Dict[str, Any]:
    """The network's parameters by structural name, every one initialized."""
    params = compat.structural_parameters(net)
    unready = [name for name, param in params.items() if compat.data_arrays(param) is None]
    if unready:
        shown = ", ".join(unready[:3]) + (f" and {len(unready) - 3} more" if len(unready) > 3 else "")
        raise ConstraintTypeError(f"WeightAverage needs an initialized network: parameters {shown} have no "
                                  f"data yet (initialize it and run a forward pass).")
    return params


def _average_dtype(dtype: Any) -> Any:
    """float32 averages for float16 weights (their rounding would swamp a small EMA step)."""
    return np.float32 if np.dtype(dtype) == np.float16 else dtype


def _attach(trainer: Any, average: WeightAverage) -> None:
    """Have an enforcing trainer update ``average`` after each of its steps."""
    state = getattr(trainer, STATE, None)
    if state is None:
        raise ConstraintTypeError(
            "WeightAverage(trainer=...) takes a trainer that enforces constraints (gc.ConstrainedTrainer "
            "or gc.enforce(trainer)); with another, call averages.update() after each trainer.step().")
    state.averages.append(average)
