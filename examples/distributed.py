"""Max-norm training on MXNet's parameter-server kvstore or on Horovod.

Parameter server, on this machine (scheduler, 2 servers, 2 workers)::

    python -m gluon_constraints.launch -n 2 -s 2 python examples/distributed.py --kvstore dist_sync

Horovod (install the ``horovod`` extra, see docs/distributed.md)::

    horovodrun -np 2 -H localhost:2 --gloo python examples/distributed.py --horovod

Each worker trains a dropout MLP on its shard of scikit-learn's digits with ``MaxNorm(3)`` on every
weight matrix, then checks every copy (rank 0 also the servers' copy) with
``trainer.verify_constraints()`` and prints its largest unit norm.
"""

import argparse

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from sklearn.datasets import load_digits

import gluon_constraints as gc
from gluon_constraints import nn


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kvstore", default="dist_sync",
                        help="dist_sync, dist_device_sync or dist_async (parameter server)")
    parser.add_argument("--horovod", action="store_true", help="use Horovod instead")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--max-norm", type=float, default=3.0)
    args = parser.parse_args()

    if args.horovod:
        import horovod.mxnet as hvd

        hvd.init()
        rank, workers = hvd.rank(), hvd.size()
    else:
        kvstore = mx.kv.create(args.kvstore)
        rank, workers = kvstore.rank, kvstore.num_workers

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)[rank::workers]
    y = digits.target.astype(np.float32)[rank::workers]

    mx.random.seed(0)  # the same initial weights on every worker
    net = nn.HybridSequential()
    net.add(nn.Dense(256, activation="relu", weight_constraint=gc.MaxNorm(args.max_norm)),
            nn.Dropout(0.5),
            nn.Dense(10, weight_constraint=gc.MaxNorm(args.max_norm)))
    net.initialize(mx.init.Xavier(magnitude=2.0))
    net(mx.nd.array(x[:1]))  # finish deferred initialization before the trainer's first step
    net.hybridize()
    options = {"learning_rate": 0.1, "momentum": 0.9}
    if args.horovod:
        hvd.broadcast_parameters(net.collect_params(), root_rank=0)
        trainer = gc.enforce(hvd.DistributedTrainer(net.collect_params(), "sgd", options))
    else:
        trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", options, kvstore=kvstore)

    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    batches = gluon.data.DataLoader(gluon.data.ArrayDataset(x, y), batch_size=32, shuffle=True,
                                    last_batch="discard")
    for epoch in range(args.epochs):
        for xb, yb in batches:
            with autograd.record():
                loss = loss_fn(net(xb), yb)
            loss.backward()
            trainer.step(xb.shape[0])
    trainer.verify_constraints()
    norms = [float(np.sqrt((p.data().asnumpy() ** 2).sum(axis=1)).max())
             for p in net.collect_params(".*weight").values()]
    print(f"worker {rank}/{workers}: largest unit norm per layer {np.round(norms, 4).tolist()}",
          flush=True)


if __name__ == "__main__":
    main()
