"""One Horovod worker (started by horovodrun): the reference MLP with gc.enforce on Horovod's
DistributedTrainer. Writes ``<out>/rank<r>.npz`` and ``<out>/rank<r>.json``."""

import argparse
import json
import os

import horovod.mxnet as hvd
import mxnet as mx
import numpy as np
from mxnet import autograd

import gluon_constraints as gc
import training_reference as ref
from distributed_worker import BATCH, BOUND, LR, MOMENTUM, STEPS, build_net


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    net = build_net([mx.cpu(0)], gc.MaxNorm(BOUND))
    params = net.collect_params()
    hvd.broadcast_parameters(params, root_rank=0)
    # Horovod averages gradients over workers; the ps-lite oracle sums them: scale lr by size.
    trainer = gc.enforce(hvd.DistributedTrainer(params, "sgd", {"learning_rate": LR * size, "momentum": MOMENTUM}))
    for x, y in ref.batches(STEPS, BATCH * size):
        part = slice(rank * BATCH, (rank + 1) * BATCH)
        with autograd.record():
            loss = 0.5 * ((net(mx.nd.array(x[part])) - mx.nd.array(y[part])) ** 2).sum()
        loss.backward()
        trainer.step(BATCH)
    trainer.verify_constraints()
    np.savez(os.path.join(args.out, f"rank{rank}.npz"),
             **{name: p.data().asnumpy() for name, p in params.items()})
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "pid": os.getpid(), "optimizer": repr(trainer._optimizer)}, f)


if __name__ == "__main__":
    main()
