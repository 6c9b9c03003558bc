"""One worker of a distributed job training a constrained row-sparse embedding weight.

Started by gluon_constraints.launch (tests/test_distributed.py). Trains MXNet's
``SparseEmbedding(40, 6)`` (a ``row_sparse`` weight that the servers keep whole and the workers
pull a batch's rows of) with ``MaxNorm`` + ``Dense(1)`` from fixed weights on its half of each
batch: the servers update and project the rows the gradients have. Writes the servers' copy of
the embedding and the check of ``verify_constraints`` to ``<out>/rank<r>.npz`` and
``<out>/rank<r>.json``.

(A dense weight with a row-sparse gradient, ``Embedding(sparse_grad=True)``, is not trained here:
MXNet 1.9.1's servers crash on it with plain Gluon too, apache/mxnet#19949.)
"""

import argparse
import json
import os
import sys

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

import gluon_constraints as gc

VOCABULARY, DIM, BOUND, STEPS, BATCH = 40, 6, 0.5, 5, 4
# A row-sparse weight initialises the kvstore at its first pull, before the first step, so the
# gradient's scale is fixed in the optimizer (as MXNet's sparse examples do) and steps count 1.
OPTIONS = {"sgd": {"learning_rate": 1.0, "momentum": 0.9, "rescale_grad": 1.0 / BATCH},
           "adam": {"learning_rate": 0.3, "rescale_grad": 1.0 / BATCH}}


def build_net(contexts=None):
    """The embedding model with the weights every worker and the test's reference start from."""
    net = gluon.nn.Sequential(prefix="emb_")
    with net.name_scope():
        net.add(gluon.contrib.nn.SparseEmbedding(VOCABULARY, DIM), gluon.nn.Dense(1, flatten=True, in_units=3 * DIM))
    net.initialize(ctx=contexts)
    rng = np.random.default_rng(4)
    for param in net.collect_params().values():
        value = mx.nd.array(rng.normal(0.0, 0.05, param.shape).astype(np.float32))
        for copy in param._data:  # a row-sparse weight has no set_data before a trainer owns it
            value.tostype(copy.stype).copyto(copy)
    gc.attach(net[0].weight, gc.MaxNorm(BOUND))
    return net


def batches():
    """Each step's batch of 2 * BATCH token rows (worker r takes rows r * BATCH ...); rows 30 and
    up are never touched."""
    rng = np.random.default_rng(9)
    return [rng.integers(0, 30, (2 * BATCH, 3)).astype(np.float32) for _ in range(STEPS)]


def loss_of(net, x):
    return (10.0 * net(x) - 3.0).square().sum()


def stored_rows(kvstore, trainer, param):
    """Every row of the kvstore's (the servers') copy of row-sparse ``param``."""
    rows = mx.nd.sparse.zeros("row_sparse", param.shape)
    kvstore.row_sparse_pull(trainer._params.index(param), out=rows, row_ids=mx.nd.arange(param.shape[0], dtype="int64"))
    return rows.asnumpy()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kvstore", required=True)
    parser.add_argument("--optimizer", default="sgd")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    kv = mx.kv.create(args.kvstore)
    net = build_net()
    trainer = gc.ConstrainedTrainer(net.collect_params(), args.optimizer, dict(OPTIONS[args.optimizer]), kvstore=kv)
    for x in batches():
        with autograd.record():
            loss = loss_of(net, mx.nd.array(x[kv.rank * BATCH:(kv.rank + 1) * BATCH]))
        loss.backward()
        trainer.step(1)
    report = {"update_on_kvstore": bool(trainer._update_on_kvstore)}
    try:
        trainer.verify_constraints()
        report["verified"] = "ok"
    except gc.ConstraintViolationError as error:
        report["verified"] = str(error)
    np.savez(os.path.join(args.out, f"rank{kv.rank}.npz"), server=stored_rows(kv, trainer, net[0].weight))
    with open(os.path.join(args.out, f"rank{kv.rank}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    sys.exit(main())
