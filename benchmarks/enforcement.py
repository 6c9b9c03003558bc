"""How much enforcing constraints costs, against the memory floor and against plain training.

``python -m benchmarks.enforcement`` prints, as medians of interleaved repetitions in one run:

- floor ratio: ``gc.apply_constraints(net)`` divided by one in-place elementwise pass
  (``w *= 1.0``) over every copy of the same constrained weights: the least any projection costs,
  since it must at least read each weight once;
- throughput ratio: 10 training steps with enforcement divided by 10 plain ``gluon.Trainer``
  steps on the same architecture, run back to back with one wait at the end (as a training loop
  runs) and with a wait after every step;

for gluon-constraints (``ConstrainedTrainer``), the naive recipe (``nd.norm``, ``clip``, divide,
``w[:] = ...`` after ``step()``) and ``gluon.utils.clip_global_norm`` (the forum's answer, a
different thing), on the Dropout paper's MNIST MLP, a small CNN and a net of 50 small Dense
layers, on 1 and 2 contexts. For the 50-layer net it also compares the update alone
(``trainer.update``) with and without enforcement.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Callable, Dict, List

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

import gluon_constraints as gc
from gluon_constraints import nn
from gluon_constraints.kernels import library

MAX_NORM = 3.0
STEPS = 10


def paper_mlp(constrained: bool) -> gluon.Block:
    """784-1024-1024-1024-10, ReLU, dropout 0.5, MaxNorm(3) on every weight matrix."""
    c = gc.MaxNorm(MAX_NORM) if constrained else None
    net = nn.HybridSequential()
    in_units = 784
    for units in (1024, 1024, 1024):
        net.add(nn.Dense(units, activation="relu", in_units=in_units, weight_constraint=c), nn.Dropout(0.5))
        in_units = units
    net.add(nn.Dense(10, in_units=in_units, weight_constraint=c))
    return net


def small_cnn(constrained: bool) -> gluon.Block:
    """Two conv layers (MaxNorm on every filter), pooling, a Dense classifier."""
    c = gc.MaxNorm(MAX_NORM) if constrained else None
    net = nn.HybridSequential()
    net.add(nn.Conv2D(16, 3, padding=1, activation="relu", in_channels=1, weight_constraint=c),
            nn.MaxPool2D(2),
            nn.Conv2D(32, 3, padding=1, activation="relu", in_channels=16, weight_constraint=c),
            nn.MaxPool2D(2),
            nn.Dense(10, in_units=32 * 7 * 7))
    return net


def dense50(constrained: bool) -> gluon.Block:
    """50 Dense(64) layers: per-operator dispatch dominates."""
    c = gc.MaxNorm(MAX_NORM) if constrained else None
    net = nn.HybridSequential()
    for _ in range(50):
        net.add(nn.Dense(64, activation="relu", in_units=64, weight_constraint=c))
    return net


MODELS = {
    "paper-mlp": (paper_mlp, (128, 784)),
    "small-cnn": (small_cnn, (64, 1, 28, 28)),
    "dense50": (dense50, (128, 64)),
}


class Setup:
    """One network and trainer, with a fixed batch split over the contexts."""

    def __init__(self, model: str, ctx: List[mx.Context], method: str, seed: int = 0) -> None:
        build, input_shape = MODELS[model]
        self.ctx, self.method = ctx, method
        self.net = build(constrained=method != "plain")
        mx.random.seed(seed)
        self.net.initialize(mx.init.Xavier(magnitude=3.0), ctx=ctx)
        self.net.hybridize()
        trainer_cls = gc.ConstrainedTrainer if method == "gluon-constraints" else gluon.Trainer
        self.trainer = trainer_cls(self.net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9})
        rng = np.random.default_rng(seed)
        x = mx.nd.array(rng.normal(size=input_shape))
        y = mx.nd.array(rng.integers(0, 10, input_shape[0]))
        self.batch = input_shape[0]
        self.xs = gluon.utils.split_and_load(x, ctx)
        self.ys = gluon.utils.split_and_load(y, ctx)
        self.loss = gluon.loss.SoftmaxCrossEntropyLoss()
        self.constrained = [p for p in self.net.collect_params().values()
                            if getattr(p, "constraint", None) is not None]
        if method != "plain" and not self.constrained:
            # The naive and global-norm baselines act on the same weights gluon-constraints does.
            self.constrained = [p for p in self.net.collect_params().values() if p.name.endswith("weight")]

    def backward(self) -> None:
        with autograd.record():
            losses = [self.loss(self.net(x), y) for x, y in zip(self.xs, self.ys)]
        for loss in losses:
            loss.backward()

    def step(self) -> None:
        self.backward()
        self.trainer.step(self.batch)
        if self.method == "naive":
            naive_max_norm(self.constrained)
        elif self.method == "clip_global_norm":
            global_norm(self.constrained, self.ctx)

    def project(self) -> None:
        """One projection outside training, by this setup's method."""
        if self.method == "gluon-constraints":
            gc.apply_constraints(self.net)
        elif self.method == "naive":
            naive_max_norm(self.constrained)
        else:
            global_norm(self.constrained, self.ctx)

    def floor(self) -> None:
        for p in self.constrained:
            for w in p.list_data():
                w *= 1.0


def naive_max_norm(params) -> None:
    """The recipe users write by hand (Keras's formula, assignment with w[:] = ...)."""
    for p in params:
        for w in p.list_data():
            axes = tuple(range(1, w.ndim))
            n = mx.nd.norm(w, axis=axes, keepdims=True)
            w[:] = w * mx.nd.clip(n, 0, MAX_NORM) / (1e-7 + n)


def global_norm(params, ctx) -> None:
    """The forum's answer: one norm over all arrays, everything rescaled by the same factor."""
    for c in ctx:
        gluon.utils.clip_global_norm([p.data(c) for p in params], MAX_NORM)


def timed(fn: Callable[[], None]) -> float:
    mx.nd.waitall()
    start = time.perf_counter()
    fn()
    mx.nd.waitall()
    return time.perf_counter() - start


def run_steps(setup: Setup, wait_each: bool) -> Callable[[], None]:
    def steps() -> None:
        for _ in range(STEPS):
            setup.step()
            if wait_each:
                mx.nd.waitall()
    return steps


def measure(model: str, ctx: List[mx.Context], repeats: int) -> Dict[str, Dict[str, float]]:
    methods = ["plain", "gluon-constraints", "naive", "clip_global_norm"]
    setups = {m: Setup(model, ctx, m) for m in methods}
    for s in setups.values():  # warm up: kvstore set-up, first-call costs, weights at the bound
        for _ in range(3):
            s.step()
    samples: Dict[str, Dict[str, List[float]]] = {m: {"floor": [], "project": [], "loop": [], "wait": []}
                                                 for m in methods}
    for _ in range(repeats):  # interleaved: every method sees the same machine state
        for m in methods:
            s = setups[m]
            if m != "plain":
                samples[m]["floor"].append(timed(s.floor))
                samples[m]["project"].append(timed(s.project))
            samples[m]["loop"].append(timed(run_steps(s, wait_each=False)))
            samples[m]["wait"].append(timed(run_steps(s, wait_each=True)))
    med = {m: {k: statistics.median(v) for k, v in d.items() if v} for m, d in samples.items()}
    table = {}
    for m in methods[1:]:
        table[m] = {
            "floor_ratio": med[m]["project"] / med[m]["floor"],
            "floor_ms": med[m]["floor"] * 1e3,
            "project_ms": med[m]["project"] * 1e3,
            "throughput_loop": med[m]["loop"] / med["plain"]["loop"],
            "throughput_wait": med[m]["wait"] / med["plain"]["wait"],
            "step_ms": med[m]["loop"] / STEPS * 1e3,
        }
    table["plain"] = {"step_ms": med["plain"]["loop"] / STEPS * 1e3}
    return table


def measure_update(ctx: List[mx.Context], repeats: int) -> Dict[str, float]:
    """dense50: trainer.update alone (gradients ready), plain vs with enforcement."""
    results = {}
    setups = {}
    for m in ("plain", "gluon-constraints"):
        s = Setup("dense50", ctx, m)
        s.trainer = (gc.ConstrainedTrainer if m != "plain" else gluon.Trainer)(
            s.net.collect_params(), "sgd", {"learning_rate": 0.01, "momentum": 0.9}, update_on_kvstore=False)
        s.backward()
        setups[m] = s
    samples: Dict[str, List[float]] = {m: [] for m in setups}

    def updates(s: Setup) -> Callable[[], None]:
        arrays = [a for p in s.net.collect_params().values() for a in p.list_data()]

        def run() -> None:
            for _ in range(STEPS):
                for a in arrays:  # the gradients are reused: mark them fresh, as backward would
                    a._fresh_grad = True
                s.trainer.update(s.batch)
        return run

    for s in setups.values():
        timed(updates(s))
    for _ in range(repeats):
        for m, s in setups.items():
            samples[m].append(timed(updates(s)))
    plain = statistics.median(samples["plain"])
    ours = statistics.median(samples["gluon-constraints"])
    results["update_ms"] = plain / STEPS * 1e3
    results["enforcement_ms"] = (ours - plain) / STEPS * 1e3
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="Cost of constraint enforcement (medians of interleaved runs).")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--contexts", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    print(f"gluon-constraints enforcement benchmark: mxnet {mx.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, fused kernel {'loaded' if library.kernel() else 'NOT available (stock operators)'}")
    print(f"medians of {args.repeats} interleaved repetitions; throughput = {STEPS} steps with / without enforcement\n")
    header = (f"{'model':<10} {'ctx':>3} {'method':<18} {'floor ratio':>11} {'pass ms':>8} {'proj ms':>8} "
              f"{'thru (1 wait)':>13} {'thru (wait/step)':>16} {'step ms':>8}")
    print(header)
    print("-" * len(header))
    for model in args.models:
        for n in args.contexts:
            ctx = [mx.cpu(i) for i in range(n)]
            table = measure(model, ctx, args.repeats)
            print(f"{model:<10} {n:>3} {'plain Trainer':<18} {'':>11} {'':>8} {'':>8} {'1.000':>13} {'1.000':>16} "
                  f"{table['plain']['step_ms']:8.2f}")
            for method in ("gluon-constraints", "naive", "clip_global_norm"):
                r = table[method]
                print(f"{model:<10} {n:>3} {method:<18} {r['floor_ratio']:11.2f} {r['floor_ms']:8.3f} "
                      f"{r['project_ms']:8.3f} {r['throughput_loop']:13.3f} {r['throughput_wait']:16.3f} "
                      f"{r['step_ms']:8.2f}")
        if model == "dense50":
            for n in args.contexts[:1]:
                u = measure_update([mx.cpu(i) for i in range(n)], args.repeats)
                print(f"dense50 update alone ({n} ctx): optimizer update {u['update_ms']:.3f} ms/step, "
                      f"enforcement adds {u['enforcement_ms']:.3f} ms/step "
                      f"({u['enforcement_ms'] / u['update_ms']:.2f} x the update)")
    print("\nfloor ratio: apply_constraints time / one in-place pass (w *= 1.0) over every copy of the "
          "constrained weights.\nthroughput: training time with enforcement / plain gluon.Trainer, "
          "same architecture and batch.")


if __name__ == "__main__":
    main()
