"""What a constraint on a huge embedding costs with row-sparse gradients.

``python -m benchmarks.sparse_embedding`` prints, as medians of interleaved blocks of steps in one
run, the training time of ``Embedding(vocabulary, 64, sparse_grad=True)`` + ``Dense(1)`` with
``MaxNorm(1.0)`` on the embedding (``ConstrainedTrainer``) divided by the same model's plain
``gluon.Trainer`` time, for vocabularies of 10^5, 10^6 and 4 x 10^6 rows, a batch of 512 x 4
token indices, SGD and Adam with ``lazy_update=True``, on 1 and 2 contexts; the spread is the
lowest and highest ratio of a block. A lazy update writes only the batch's rows, and the
projection follows it (``docs/training.md``, "Row-sparse gradients"), so the ratio should not grow
with the vocabulary.

A second table (``--rows``) times the projection of the touched rows alone
(``gc_row_indices`` and ``gc_touched_rows`` with no update, the kernel's calls) for a growing
number of touched rows in the 10^6-row table, against one pass over those rows (``take``), to
show the cost is proportional to the rows touched.
"""

from __future__ import annotations

import argparse
import gc as garbage_collector
import statistics
from typing import Dict, List

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

import gluon_constraints as gc
from gluon_constraints import nn
from gluon_constraints.catalogue import Reduction
from gluon_constraints.kernels.projection import project_touched_rows, touched_group

from .enforcement import STEPS, print_heading, run_steps, timed

DIM = 64
BATCH = (512, 4)
BATCHES = 4  # distinct batches cycled through, drawn once
OPTIMIZERS = {"sgd": ("sgd", {"learning_rate": 0.1}),
              "adam": ("adam", {"learning_rate": 0.01})}


class Setup:
    """One embedding model and trainer with fixed batches split over the contexts."""

    def __init__(self, vocabulary: int, ctx: List[mx.Context], constrained: bool, optimizer: str) -> None:
        self.net = gluon.nn.HybridSequential()
        self.net.add(nn.Embedding(vocabulary, DIM, sparse_grad=True,
                                  weight_constraint=gc.MaxNorm(1.0) if constrained else None),
                     gluon.nn.Dense(1, flatten=True))
        mx.random.seed(0)
        self.net.initialize(mx.init.Uniform(0.05), ctx=ctx)
        self.net.hybridize()
        name, settings = OPTIMIZERS[optimizer]
        trainer = gc.ConstrainedTrainer if constrained else gluon.Trainer
        self.trainer = trainer(self.net.collect_params(), name, dict(settings, lazy_update=True))
        rng = np.random.default_rng(1)
        self.batches = [gluon.utils.split_and_load(mx.nd.array(rng.integers(0, vocabulary, BATCH)), ctx)
                        for _ in range(BATCHES)]
        self.targets = gluon.utils.split_and_load(mx.nd.array(rng.normal(size=(BATCH[0], 1))), ctx)
        self.loss = gluon.loss.L2Loss()
        self.at = 0

    def step(self) -> None:
        xs = self.batches[self.at % BATCHES]
        self.at += 1
        with autograd.record():
            losses = [self.loss(self.net(x) * 10.0, y) for x, y in zip(xs, self.targets)]
        for loss in losses:
            loss.backward()
        self.trainer.step(BATCH[0])


def measure(vocabulary: int, ctx: List[mx.Context], optimizer: str, repeats: int) -> Dict[str, float]:
    """Constrained / plain training time, interleaved blocks of steps."""
    plain = Setup(vocabulary, ctx, False, optimizer)
    ours = Setup(vocabulary, ctx, True, optimizer)
    for _ in range(3):  # warm up: kvstore set-up, the first step's whole projection
        plain.step()
        ours.step()
    ratios, plain_times = [], []
    for _ in range(repeats):
        plain_times.append(timed(run_steps(plain, wait_each=False)))
        ratios.append(timed(run_steps(ours, wait_each=False)) / plain_times[-1])
    del plain, ours
    garbage_collector.collect()  # a 4 x 10^6-row table and its Adam states take gigabytes per context
    return {"ratio": statistics.median(ratios), "low": min(ratios), "high": max(ratios),
            "step_ms": statistics.median(plain_times) / STEPS * 1e3}


def measure_rows(touched: int, repeats: int, vocabulary: int = 10 ** 6) -> Dict[str, float]:
    """The projection of ``touched`` rows of a table (the kernel, no update) against one read
    of those rows."""
    rng = np.random.default_rng(2)
    weight = mx.nd.array(rng.uniform(-0.5, 0.5, (vocabulary, DIM)).astype(np.float32))
    indices = np.sort(rng.choice(vocabulary, touched, replace=False))
    rows = mx.nd.sparse.row_sparse_array((np.ones((touched, DIM), np.float32), indices),
                                         shape=(vocabulary, DIM))
    index_array = mx.nd.array(indices, dtype=np.int64)
    constraint, reduction = gc.MaxNorm(1.0), Reduction((1,))
    group = touched_group(weight, constraint, reduction)
    indices = mx.nd.empty((vocabulary + 1,), dtype=np.int64)  # the buffer a trainer keeps per weight
    project = lambda: project_touched_rows(weight, rows, constraint, reduction, None, group, indices)  # noqa: E731
    read = lambda: mx.nd.take(weight, index_array)  # noqa: E731
    timed(project), timed(read)
    projections, reads = [], []
    for _ in range(repeats):
        projections.append(timed(project))
        reads.append(timed(read))
    return {"project_us": statistics.median(projections) * 1e6, "read_us": statistics.median(reads) * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description="Constraints on huge embeddings with row-sparse gradients.")
    parser.add_argument("--vocabularies", nargs="+", type=int, default=[10 ** 5, 10 ** 6, 4 * 10 ** 6])
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    parser.add_argument("--contexts", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rows", nargs="*", type=int, default=None,
                        help="time the projection of this many touched rows instead (no numbers: "
                             "512 2048 8192 32768)")
    args = parser.parse_args()
    if args.rows is not None:
        counts = args.rows or [512, 2048, 8192, 32768]
        print_heading("touched-rows", f"medians of {args.repeats} repetitions, a 10^6 x {DIM} table",
                      f"{'touched rows':>12} {'projection us':>13} {'take us':>8} {'us per 1000 rows':>16}")
        for count in counts:
            r = measure_rows(count, args.repeats)
            print(f"{count:>12} {r['project_us']:13.1f} {r['read_us']:8.1f} "
                  f"{r['project_us'] / count * 1000:16.1f}", flush=True)
        return
    print_heading("sparse-embedding", f"medians of {args.repeats} interleaved blocks of {STEPS} steps; "
                  f"spread: lowest and highest block; batch {BATCH[0]} x {BATCH[1]} indices, dim {DIM}",
                  f"{'vocabulary':>10} {'optimizer':<9} {'ctx':>3} {'plain ms':>8} {'constrained/plain':>17} "
                  f"{'spread':>13}")
    for vocabulary in args.vocabularies:
        for optimizer in args.optimizers:
            for n in args.contexts:
                r = measure(vocabulary, [mx.cpu(i) for i in range(n)], optimizer, args.repeats)
                print(f"{vocabulary:>10} {optimizer:<9} {n:>3} {r['step_ms']:8.2f} {r['ratio']:17.3f} "
                      f"{r['low']:6.3f}-{r['high']:<6.3f}", flush=True)


if __name__ == "__main__":
    main()
