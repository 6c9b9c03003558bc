"""Max-norm + dropout (Srivastava et al. 2014) on scikit-learn's handwritten digits.

Trains the same dropout MLP twice from the same initial weights, once plain and once with
``MaxNorm`` on every weight matrix (``gluon_constraints.nn`` layers and a ``ConstrainedTrainer``,
which projects right after every update), and prints test accuracy and the largest per-unit L2
norm of each layer for both runs. ``--contexts 2`` splits each batch over two CPU contexts, the
multi-GPU configuration where a projection after ``trainer.step()`` would be undone by the
kvstore. No download: the digits ship with scikit-learn.

Run ``make demo`` (or ``python examples/digits_maxnorm.py --help``).
"""

import argparse

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import gluon_constraints as gc
from gluon_constraints import nn


def build_net(max_norm):
    """A 64-256-256-10 ReLU MLP with dropout; MaxNorm on each weight matrix if asked."""
    constraint = gc.MaxNorm(max_norm) if max_norm else None
    net = nn.HybridSequential()
    for units in (256, 256):
        net.add(nn.Dense(units, activation="relu", weight_constraint=constraint), nn.Dropout(0.5))
    net.add(nn.Dense(10, weight_constraint=constraint))
    return net


def largest_unit_norms(net):
    """Largest L2 norm of a row (one unit's incoming weights) of each weight matrix, any copy."""
    return [max(float(np.sqrt((a.asnumpy() ** 2).sum(axis=1)).max()) for a in p.list_data())
            for p in net.collect_params(".*weight").values()]


def accuracy(net, x, y, ctx):
    return float((net(mx.nd.array(x, ctx=ctx)).argmax(axis=1).asnumpy() == y).mean())


def train(max_norm, data, args):
    x_train, x_test, y_train, y_test = data
    ctx = [mx.cpu(i) for i in range(args.contexts)]
    mx.random.seed(args.seed)
    np.random.seed(args.seed)  # the DataLoader's shuffling
    net = build_net(max_norm)
    net.initialize(mx.init.Xavier(magnitude=2.0), ctx=ctx)
    net.hybridize()
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd",
                                    {"learning_rate": args.lr, "momentum": 0.9})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    batches = gluon.data.DataLoader(gluon.data.ArrayDataset(x_train, y_train.astype(np.float32)),
                                    batch_size=args.batch_size, shuffle=True)
    label = f"MaxNorm({max_norm})" if max_norm else "no constraint"
    for _ in tqdm(range(args.epochs), desc=f"{label:>14}", unit="epoch"):
        for xb, yb in batches:
            xs = gluon.utils.split_and_load(xb, ctx, even_split=False)
            ys = gluon.utils.split_and_load(yb, ctx, even_split=False)
            with autograd.record():
                losses = [loss_fn(net(x), y) for x, y in zip(xs, ys)]
            for loss in losses:
                loss.backward()
            trainer.step(xb.shape[0])
    test_acc = accuracy(net, x_test, y_test, ctx[0])
    return label, test_acc, largest_unit_norms(net)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max-norm", type=float, default=4.0)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contexts", type=int, default=1,
                        help="number of CPU contexts to split each batch over (like GPUs)")
    args = parser.parse_args()

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    data = train_test_split(x, digits.target, test_size=0.3, random_state=args.seed,
                            stratify=digits.target)
    results = [train(None, data, args), train(args.max_norm, data, args)]
    print(f"\n{args.contexts} context(s)")
    print(f"{'run':>16} | {'test accuracy':>13} | largest unit norm per layer (any device copy)")
    for label, acc, norms in results:
        print(f"{label:>16} | {acc:13.4f} | " + "  ".join(f"{n:.4f}" for n in norms))
    bound = args.max_norm * (1 + 1e-5)
    if max(results[1][2]) > bound:
        raise SystemExit(f"MaxNorm run has a unit norm above {args.max_norm}: {results[1][2]}")


if __name__ == "__main__":
    main()
