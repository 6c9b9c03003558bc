"""What a weight average costs per training step.

``python -m benchmarks.averaging`` prints, as medians of interleaved blocks of steps in one run,
the training time of a constrained network (``ConstrainedTrainer``, SGD with momentum, MaxNorm
as in ``benchmarks.enforcement``) with a ``gc.WeightAverage`` (EMA and SWA, updated after every
step and after every 10th) divided by the same network's time without one,
for the Dropout paper's MLP and ResNet-18, on 1 and 2 contexts. An update is one element-wise
operator per parameter and device copy (reading the average and the weight, writing the
average) plus the projection of the constrained averages, all queued on the engine.
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
    gc.WeightAverage(averaged.net, decay=0.999, mode=mode, every=every, trainer=averaged.trainer)
    ratios = []
    for _ in range(repeats):  # interleaved blocks of steps
        off = timed(run_steps(plain, wait_each=False))
        ratios.append(timed(run_steps(averaged, wait_each=False)) / off)
    return {"ratio": statistics.median(ratios), "low": min(ratios), "high": max(ratios)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["paper-mlp", "resnet18"])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    print(f"weight averages: medians of {args.repeats} interleaved blocks of {STEPS} steps; spread: lowest and "
          f"highest block")
    print(f"{'model':<10} {'mode':<5} {'every':>5} {'ctx':>3} {'with/without':>13} {'spread':>13}")
    for model in args.models:
        for mode, every in (("ema", 1), ("ema", 10), ("swa", 1), ("swa", 10)):
            for n in args.contexts:
                r = measure(model, [mx.cpu(i) for i in range(n)], mode, every, args.repeats)
                print(f"{model:<10} {mode:<5} {every:>5} {n:>3} {r['ratio']:13.3f} {r['low']:6.3f}-{r['high']:<6.3f}",
                      flush=True)


if __name__ == "__main__":
    main()
