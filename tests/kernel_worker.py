"""Train a small constrained network in a fresh process and print what happened as JSON.

The fused kernel is built, cached and loaded once per process, so each cache situation needs a
process of its own. Usage: ``python kernel_worker.py OPTIMIZER CONTEXTS``. Prints
``{"warnings": [...], "fused": bool, "max_norm": float}``: the gluon-constraints warnings raised,
whether the kernel is in use, and the largest row norm over every device copy.
"""

import json
import sys
import warnings

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

import gluon_constraints as gc
from gluon_constraints import nn
from gluon_constraints.kernels import library

BOUND = 0.5


def main(optimizer, contexts):
    ctx = [mx.cpu(i) for i in range(contexts)]
    settings = {"learning_rate": 0.5, **({"momentum": 0.9} if optimizer == "sgd" else {})}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = nn.Dense(8, in_units=16, weight_constraint=gc.MaxNorm(BOUND))
        net.initialize(mx.init.Normal(1.0), ctx=ctx)
        trainer = gc.ConstrainedTrainer(net.collect_params(), optimizer, settings)
        for _ in range(2):
            xs = gluon.utils.split_and_load(mx.nd.ones((4, 16)), ctx)
            with autograd.record():
                losses = [-net(x).sum() for x in xs]
            for loss in losses:
                loss.backward()
            trainer.step(4)
    norms = [np.linalg.norm(w.asnumpy().astype(np.float64), axis=1).max() for w in net.weight.list_data()]
    ours = [f"{w.category.__name__}: {w.message}" for w in caught
            if w.category.__module__.startswith("gluon_constraints")]
    print(json.dumps({"warnings": ours, "fused": library.kernel() is not None,
                      "max_norm": float(max(norms))}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
