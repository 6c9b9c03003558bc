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

A second table (``--optimizers``) compares constrained with plain training for every model,
the model zoo's ResNet-18 included, and the optimizers SGD with momentum, Adam, NAG and RMSProp:
the median ratio of interleaved blocks of steps with the spread (lowest and highest ratio of a
repetition), and the projection alone (``gc.apply_constraints``) against two floors: one read
pass over the constrained weights (``multi_sum_sq``, what a projection that finds every row
feasible must at least do) and one read-and-write pass (``w *= 1.0``), each timed
``PASS_SAMPLES`` times per repetition right after a training step. ``--plot FILE`` draws the
ratios (matplotlib).
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
PASS_SAMPLES = 3  # per repetition: the projection and both passes, each timed after a step


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


def resnet18(constrained: bool) -> gluon.Block:
    """The model zoo's ResNet-18 (thumbnail, for 32x32 inputs), MaxNorm(3) on Dense and Conv2D."""
    net = gluon.model_zoo.vision.resnet18_v1(thumbnail=True)
    if constrained:
        gc.constrain(net, {r"weight$": gc.MaxNorm(MAX_NORM)}, layers=(gluon.nn.Dense, gluon.nn.Conv2D))
    return net


def dcgan(constrained: bool) -> gluon.Block:
    """A DCGAN-style generator (transposed convolutions, 100x1x1 to 3x32x32) with a Dense head,
    MaxNorm(3) per output channel of every transposed convolution and per Dense unit."""
    c = gc.MaxNorm(MAX_NORM) if constrained else None
    net = nn.HybridSequential()
    for channels, in_channels, stride, pad in ((128, 100, 1, 0), (64, 128, 2, 1), (32, 64, 2, 1), (3, 32, 2, 1)):
        net.add(nn.Conv2DTranspose(channels, 4, strides=stride, padding=pad, in_channels=in_channels,
                                   activation="relu", weight_constraint=c))
    net.add(nn.Flatten(), nn.Dense(10, in_units=3 * 32 * 32, weight_constraint=c))
    return net


MODELS = {
    "paper-mlp": (paper_mlp, (128, 784)),
    "small-cnn": (small_cnn, (64, 1, 28, 28)),
    "dense50": (dense50, (128, 64)),
    "resnet18": (resnet18, (8, 3, 32, 32)),
    "dcgan": (dcgan, (16, 100, 1, 1)),
}
OPTIMIZERS = {"sgd-momentum": ("sgd", {"learning_rate": 0.01, "momentum": 0.9}),
              "adam": ("adam", {"learning_rate": 0.001}),
              "nag": ("nag", {"learning_rate": 0.01, "momentum": 0.9}),
              "rmsprop": ("rmsprop", {"learning_rate": 0.001})}


class Setup:
    """One network and trainer, with a fixed batch split over the contexts."""

    def __init__(self, model: str, ctx: List[mx.Context], method: str, seed: int = 0,
                 optimizer: str = "sgd-momentum") -> None:
        build, input_shape = MODELS[model]
        self.ctx, self.method = ctx, method
        self.net = build(constrained=method != "plain")
        mx.random.seed(seed)
        self.net.initialize(mx.init.Xavier(magnitude=3.0), ctx=ctx)
        self.net.hybridize()
        name, settings = OPTIMIZERS[optimizer]
        if method in ("gluon-constraints", "monitored"):
            self.trainer = gc.ConstrainedTrainer(self.net.collect_params(), name, dict(settings),
                                                 monitor=method == "monitored")
        else:
            self.trainer = gluon.Trainer(self.net.collect_params(), name, dict(settings))
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

    def read_floor(self) -> None:
        """One read pass over every copy of the constrained weights (a fused sum of squares)."""
        arrays = [w for p in self.constrained for w in p.list_data()]
        mx.nd.multi_sum_sq(*arrays, num_arrays=len(arrays))


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


def measure_optimizer(model: str, ctx: List[mx.Context], optimizer: str, repeats: int) -> Dict[str, float]:
    """Constrained / plain training time and the projection against both floors."""
    setups = {m: Setup(model, ctx, m, optimizer=optimizer) for m in ("plain", "gluon-constraints")}
    for s in setups.values():
        for _ in range(3):
            s.step()
    ratios, project, read, write = [], [], [], []
    ours = setups["gluon-constraints"]

    def after_a_step(fn: Callable[[], None]) -> float:
        # The first operators on arrays a step has just written run several times slower than
        # the next ones; each of the three is timed in that state, as after training.
        ours.step()
        return timed(fn)

    for _ in range(repeats):  # interleaved blocks of steps
        plain = timed(run_steps(setups["plain"], wait_each=False))
        ratios.append(timed(run_steps(ours, wait_each=False)) / plain)
        for _ in range(PASS_SAMPLES):  # a pass takes well under a millisecond on small nets
            project.append(after_a_step(ours.project))
            read.append(after_a_step(ours.read_floor))
            write.append(after_a_step(ours.floor))
    return {"ratio": statistics.median(ratios), "low": min(ratios), "high": max(ratios),
            "project_read": statistics.median(project) / statistics.median(read),
            "project_write": statistics.median(project) / statistics.median(write)}


def measure_monitoring(model: str, ctx: List[mx.Context], optimizer: str, repeats: int) -> Dict[str, float]:
    """Training time with monitor=True / with monitor=False (both constrained)."""
    setups = {m: Setup(model, ctx, m, optimizer=optimizer) for m in ("gluon-constraints", "monitored")}
    for s in setups.values():
        for _ in range(3):
            s.step()
    ratios = []
    for _ in range(repeats):  # interleaved blocks of steps
        off = timed(run_steps(setups["gluon-constraints"], wait_each=False))
        ratios.append(timed(run_steps(setups["monitored"], wait_each=False)) / off)
    return {"ratio": statistics.median(ratios), "low": min(ratios), "high": max(ratios)}


def monitoring_table(args: argparse.Namespace) -> None:
    optimizers = args.monitoring or ["sgd-momentum", "adam"]
    print_heading("monitoring", f"medians of {args.repeats} interleaved blocks of {STEPS} steps; spread: "
                  f"lowest and highest block",
                  f"{'model':<10} {'optimizer':<13} {'ctx':>3} {'monitor on/off':>14} {'spread':>13}")
    for model in args.models:
        for optimizer in optimizers:
            for n in args.contexts:
                r = measure_monitoring(model, [mx.cpu(i) for i in range(n)], optimizer, args.repeats)
                print(f"{model:<10} {optimizer:<13} {n:>3} {r['ratio']:14.3f} "
                      f"{r['low']:6.3f}-{r['high']:<6.3f}", flush=True)


def plot(results: Dict[tuple, Dict[str, float]], path: str) -> None:
    """Bar chart of the constrained / plain ratios with their spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{m}\n{o}, {n} ctx" for m, o, n in results]
    values = [r["ratio"] for r in results.values()]
    errors = [[r["ratio"] - r["low"] for r in results.values()], [r["high"] - r["ratio"] for r in results.values()]]
    figure, axes = plt.subplots(figsize=(max(8, 0.55 * len(labels)), 4.5))
    axes.bar(range(len(values)), values, yerr=errors, capsize=3, color="#4c72b0")
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.axhline(1.03, color="#c44e52", linestyle="--", linewidth=0.8, label="target 1.03")
    axes.set_xticks(range(len(values)))
    axes.set_xticklabels(labels, rotation=90, fontsize=7)
    axes.set_ylabel("constrained / plain training time")
    axes.set_title("Cost of MaxNorm(3) enforcement (median, bars: lowest to highest repetition)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description="Cost of constraint enforcement (medians of interleaved runs).")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--contexts", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--optimizers", nargs="*", default=None, choices=list(OPTIMIZERS),
                        help="print the optimizer table instead (no names: all of them)")
    parser.add_argument("--plot", default=None, help="with --optimizers: write a PNG of the ratios here")
    parser.add_argument("--monitoring", nargs="*", default=None, choices=list(OPTIMIZERS),
                        help="print the cost of monitor=True instead (no names: sgd-momentum, adam)")
    args = parser.parse_args()
    if args.optimizers is not None:
        optimizer_table(args)
        return
    if args.monitoring is not None:
        monitoring_table(args)
        return

    print_heading("enforcement", f"medians of {args.repeats} interleaved repetitions; throughput = {STEPS} "
                  f"steps with / without enforcement",
                  f"{'model':<10} {'ctx':>3} {'method':<18} {'floor ratio':>11} {'pass ms':>8} {'proj ms':>8} "
                  f"{'thru (1 wait)':>13} {'thru (wait/step)':>16} {'step ms':>8}")
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


def print_heading(kind: str, method: str, header: str) -> None:
    """The machine, how the numbers were taken, and a table header."""
    print(f"gluon-constraints {kind} benchmark: mxnet {mx.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, fused kernel "
          f"{'loaded' if library.kernel() else 'NOT available (stock operators)'}")
    print(f"{method}\n")
    print(header)
    print("-" * len(header))


def optimizer_table(args: argparse.Namespace) -> None:
    optimizers = args.optimizers or list(OPTIMIZERS)
    print_heading("optimizer", f"medians of {args.repeats} interleaved blocks of {STEPS} steps; spread: "
                  f"lowest and highest block; passes: medians of {args.repeats * PASS_SAMPLES}, each "
                  f"timed after a step",
                  f"{'model':<10} {'optimizer':<13} {'ctx':>3} {'constrained/plain':>17} {'spread':>13} "
                  f"{'proj/read pass':>14} {'proj/r+w pass':>13}")
    results = {}
    for model in args.models:
        for optimizer in optimizers:
            for n in args.contexts:
                r = measure_optimizer(model, [mx.cpu(i) for i in range(n)], optimizer, args.repeats)
                results[(model, optimizer, n)] = r
                print(f"{model:<10} {optimizer:<13} {n:>3} {r['ratio']:17.3f} "
                      f"{r['low']:6.3f}-{r['high']:<6.3f} {r['project_read']:14.2f} "
                      f"{r['project_write']:13.2f}", flush=True)
    if args.plot:
        plot(results, args.plot)
        print(f"\nplot written to {args.plot}")


if __name__ == "__main__":
    main()
