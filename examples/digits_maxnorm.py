"""Max-norm + dropout (Srivastava et al. 2014) on scikit-learn's handwritten digits.

Trains the same dropout MLP twice from the same initial weights, once plain and once with
``MaxNorm`` on every weight matrix, and prints test accuracy and the largest per-unit L2 norm of
each layer for both runs. No download: the digits ship with scikit-learn.

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


def build_net(max_norm):
    """A 64-256-256-10 ReLU MLP with dropout; MaxNorm on each weight matrix if asked."""
    constraint = gc.MaxNorm(max_norm) if max_norm else None
    net = gluon.nn.HybridSequential()
    for units in (256, 256):
        net.add(gluon.nn.Dense(units, activation="relu"), gluon.nn.Dropout(0.5))
    net.add(gluon.nn.Dense(10))
    for name, param in net.collect_params(".*weight").items():
        param.constraint = constraint
    return net


def project(net):
    """Apply each weight's constraint after an update (one context: the copy is authoritative)."""
    for param in net.collect_params().values():
        constraint = getattr(param, "constraint", None)
        if constraint is not None:
            constraint(param.data()).copyto(param.data())


def largest_unit_norms(net):
    """Largest L2 norm of a row (one unit's incoming weights) of each weight matrix."""
    return [float(np.sqrt((p.data().asnumpy() ** 2).sum(axis=1)).max())
            for p in net.collect_params(".*weight").values()]


def accuracy(net, x, y):
    return float((net(x).argmax(axis=1).asnumpy() == y).mean())


def train(max_norm, data, args):
    x_train, x_test, y_train, y_test = data
    mx.random.seed(args.seed)
    net = build_net(max_norm)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), "sgd",
                            {"learning_rate": args.lr, "momentum": 0.9})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    batches = gluon.data.DataLoader(gluon.data.ArrayDataset(x_train, y_train.astype(np.float32)),
                                    batch_size=args.batch_size, shuffle=True)
    label = f"MaxNorm({max_norm})" if max_norm else "no constraint"
    for _ in tqdm(range(args.epochs), desc=f"{label:>14}", unit="epoch"):
        for xb, yb in batches:
            with autograd.record():
                loss = loss_fn(net(xb), yb)
            loss.backward()
            trainer.step(xb.shape[0])
            if max_norm:
                project(net)
    test_acc = accuracy(net, mx.nd.array(x_test), y_test)
    return label, test_acc, largest_unit_norms(net)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max-norm", type=float, default=4.0)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    data = train_test_split(x, digits.target, test_size=0.3, random_state=args.seed,
                            stratify=digits.target)
    results = [train(None, data, args), train(args.max_norm, data, args)]
    print(f"\n{'run':>16} | {'test accuracy':>13} | largest unit norm per layer")
    for label, acc, norms in results:
        print(f"{label:>16} | {acc:13.4f} | " + "  ".join(f"{n:.4f}" for n in norms))
    bound = args.max_norm * (1 + 1e-5)
    if max(results[1][2]) > bound:
        raise SystemExit(f"MaxNorm run has a unit norm above {args.max_norm}: {results[1][2]}")


if __name__ == "__main__":
    main()
