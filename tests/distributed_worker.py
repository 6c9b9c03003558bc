"""One worker of a distributed test job, started by gluon_constraints.launch.

Trains the reference MLP of training_reference.py on its share of each batch and writes what it
ends with to ``<out>/rank<r>.npz`` (weights of every device copy, the servers' copies pulled
back) and ``<out>/rank<r>.json`` (the trainer's configuration, verification result, any error).
"""

import argparse
import json
import os
import sys

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

import gluon_constraints as gc
import training_reference as ref
from gluon_constraints import nn

LR, MOMENTUM, BOUND, STEPS, BATCH = 0.2, 0.9, 0.6, 6, 8


class MainModuleMaxNorm(gc.MaxNorm):
    """A constraint class the servers cannot import: it lives in the worker's __main__."""


def build_net(ctx, constraint):
    net = nn.HybridSequential(prefix="mlp_")
    with net.name_scope():
        net.add(nn.Dense(ref.HIDDEN, activation="relu", in_units=ref.IN, weight_constraint=constraint),
                nn.Dense(ref.OUT, in_units=ref.HIDDEN, weight_constraint=constraint))
    net.initialize(ctx=ctx)
    for name, value in ref.initial_weights().items():
        net.collect_params()["mlp_" + name].set_data(mx.nd.array(value))
    return net


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kvstore", required=True)
    parser.add_argument("--uokv", choices=["none", "true", "false"], default="none")
    parser.add_argument("--contexts", type=int, default=1)
    parser.add_argument("--main-constraint", action="store_true")
    parser.add_argument("--constraint", help="a gc.serialize()d constraint as JSON (default MaxNorm)")
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    kv = mx.kv.create(args.kvstore)
    rank = kv.rank
    ctx = [mx.cpu(i) for i in range(args.contexts)]
    if args.constraint:
        constraint = gc.deserialize(json.loads(args.constraint))
    else:
        constraint = MainModuleMaxNorm(BOUND) if args.main_constraint else gc.MaxNorm(BOUND)
    net = build_net(ctx, constraint)
    uokv = {"none": None, "true": True, "false": False}[args.uokv]
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": LR, "momentum": MOMENTUM},
                                    kvstore=kv, update_on_kvstore=uokv, every=args.every)
    report = {"rank": rank, "error": None}
    try:
        for x, y in ref.batches(STEPS, BATCH * kv.num_workers):
            part = slice(rank * BATCH, (rank + 1) * BATCH)
            xs = gluon.utils.split_and_load(mx.nd.array(x[part]), ctx)
            ys = gluon.utils.split_and_load(mx.nd.array(y[part]), ctx)
            with autograd.record():
                losses = [0.5 * ((net(xb) - yb) ** 2).sum() for xb, yb in zip(xs, ys)]
            for loss in losses:
                loss.backward()
            trainer.step(BATCH)
    except gc.EnforcementError as error:
        report["error"] = str(error)
    arrays = {}
    if report["error"] is None:
        if "async" in args.kvstore:
            kv._barrier()  # every push has been applied before the servers' copies are read
        report["update_on_kvstore"] = bool(trainer._update_on_kvstore)
        for index, param in enumerate(trainer._params):
            for c, copy in enumerate(param.list_data()):
                arrays[f"{param.name}/ctx{c}"] = copy.asnumpy()
            if trainer._update_on_kvstore:
                stored = mx.nd.zeros(param.shape)
                kv.pull(index, out=stored)
                arrays[f"{param.name}/server"] = stored.asnumpy()
        try:
            trainer.verify_constraints()
            report["verified"] = "ok"
        except gc.ConstraintViolationError as error:
            report["verified"] = str(error)
    np.savez(os.path.join(args.out, f"rank{rank}.npz"), **arrays)
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    sys.exit(main())
