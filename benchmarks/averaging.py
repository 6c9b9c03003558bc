"""What a weight average costs per training step.

``python -m benchmarks.averaging`` prints, as medians of interleaved blocks of steps in one run,
the training time of a constrained network (``ConstrainedTrainer``, SGD with momentum, MaxNorm
as in ``benchmarks.enforcement``) with a ``gc.WeightAverage`` (EMA and SWA, updated after every
step and after every 10th) divided by the same network's time without one,
for the Dropout paper's MLP and ResNet-18, on 1 and 2 contexts, with the plain step's time and
the time of one update called alone as the trainer calls it (``after_step()``; every 10th:
mostly counting). Each pair of blocks
runs the plain one first and the averaged one first in turn. Where the fused kernel
is loaded, an update is one kernel call that reads each average and its weight, writes the
average and projects it while it is in cache; otherwise one ``sgd_update`` per array and the
projection.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Dict, List

import mxnet as mx

import gluon_constraints as gc

from .enforcement import STEPS, Setup, run_steps, timed


def measure(model: str, ctx: List[mx.Context], mode: str, every: int, repeats: int) -> Dict[str, float]:
    plain, averaged = Setup(model, ctx, "gluon-constraints"), Setup(model, ctx, "gluon-constraints")
    for setup in (plain, averaged):
        for _ in range(3):  # the first step completes deferred initialisation
            setup.step()
    average = gc.WeightAverage(averaged.net, decay=0.999, mode=mode, every=every, trainer=averaged.trainer)
    ratios, steps, updates = [], [], []
    for repeat in range(repeats):  # interleaved blocks of steps, which goes first alternating
        if repeat % 2:
            on = timed(run_steps(averaged, wait_each=False))
            off = timed(run_steps(plain, wait_each=False))
        else:
            off = timed(run_steps(plain, wait_each=False))
            on = timed(run_steps(averaged, wait_each=False))
        ratios.append(on / off)
        steps.append(off / STEPS)
        updates.append(timed(lambda: [average.after_step() for _ in range(STEPS)]) / STEPS)
    return {"ratio": statistics.median(ratios), "low": min(ratios), "high": max(ratios),
            "step_ms": statistics.median(steps) * 1e3, "update_ms": statistics.median(updates) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["paper-mlp", "resnet18"])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    print(f"weight averages: medians of {args.repeats} interleaved blocks of {STEPS} steps; spread: lowest and "
          f"highest block")
    print(f"{'model':<10} {'mode':<5} {'every':>5} {'ctx':>3} {'with/without':>13} {'spread':>13} "
          f"{'step ms':>8} {'update ms':>9}")
    for model in args.models:
        for mode, every in (("ema", 1), ("ema", 10), ("swa", 1), ("swa", 10)):
            for n in args.contexts:
                r = measure(model, [mx.cpu(i) for i in range(n)], mode, every, args.repeats)
                print(f"{model:<10} {mode:<5} {every:>5} {n:>3} {r['ratio']:13.3f} {r['low']:6.3f}-{r['high']:<6.3f} "
                      f"{r['step_ms']:8.1f} {r['update_ms']:9.2f}", flush=True)


if __name__ == "__main__":
    main()
