"""Certified robustness on scikit-learn's handwritten digits: what a network's constraints guarantee.

A classifier whose logits are L-Lipschitz (in L2) cannot change its prediction for an input
moved by less than margin / (sqrt(2) L), the margin being the top logit minus the runner-up
(Tsuzuku, Sato and Sugiyama 2018). ``gc.lipschitz_bound`` gives L for a Gluon network layer by
layer, with the exact operator norm of each convolution; constraints that bound each layer
(``SpectralNorm``, ``Orthogonal``, ``OperatorNorm``) keep L small while the network trains.

This demo trains an MLP (64-128-128-10) and a small ConvNet (two 3x3 convolutions, the second
with stride 2, then a Dense layer) on the 8x8 digits (pixels scaled to [0, 1]), each without a
constraint and with one of SpectralNorm(1), Orthogonal() (Dense layers only: their rows made
orthonormal; the convolutions then take SpectralNorm) or OperatorNorm(1) on every layer, and
reports per model: the clean test accuracy, the network's Lipschitz bound, the certified accuracy
(correct, with a certified radius of at least epsilon) at several epsilons, and the result of an
attack: projected gradient ascent on the loss, from many random starts inside each test
example's certified radius, which must never change a prediction (the run fails if it does).
It draws ``certified.png``: certified accuracy against epsilon, per model.

SpectralNorm bounds a convolution's reshaped kernel, which is not the convolution's operator
norm (up to sqrt(k * k) times larger); OperatorNorm bounds the exact one for the layer's input
size. Training uses the cross-entropy of the logits times ``--temperature`` (10): networks of
Lipschitz constant about 1 need larger margins than the plain loss asks for; the certificate is
for the network's own logits.

Run ``make certified`` (or ``python examples/certified.py --help``).
"""

import argparse
import os
import sys
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import gluon_constraints as gc
from gluon_constraints import nn

EPSILONS = [0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]
CONSTRAINTS = ["none", "SpectralNorm", "Orthogonal", "OperatorNorm"]


def load_data(seed=0):
    """Train/test split (70/30, stratified) of the digits, pixels scaled to [0, 1], as images."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return train_test_split(x, digits.target.astype(np.float32), test_size=0.3, random_state=seed,
                            stratify=digits.target)


def dense_constraint(kind):
    return {"none": None, "SpectralNorm": gc.SpectralNorm(1.0, power_iterations=3),
            "Orthogonal": gc.Orthogonal(), "OperatorNorm": gc.OperatorNorm(1.0)}[kind]


def conv_constraint(kind, size, padding):
    if kind == "OperatorNorm":
        return gc.OperatorNorm(1.0, input_shape=size, padding=padding)
    return dense_constraint("SpectralNorm" if kind == "Orthogonal" else kind)


def mlp(kind):
    net = nn.HybridSequential()
    net.add(nn.Flatten(),
            nn.Dense(128, activation="relu", in_units=64, weight_constraint=dense_constraint(kind)),
            nn.Dense(128, activation="relu", in_units=128, weight_constraint=dense_constraint(kind)),
            nn.Dense(10, in_units=128, weight_constraint=dense_constraint(kind)))
    return net


def convnet(kind):
    net = nn.HybridSequential()
    net.add(nn.Conv2D(16, 3, padding=1, in_channels=1, activation="relu",
                      weight_constraint=conv_constraint(kind, (8, 8), 1)),
            nn.Conv2D(32, 3, strides=2, padding=1, in_channels=16, activation="relu",
                      weight_constraint=conv_constraint(kind, (8, 8), 1)),
            nn.Flatten(),
            nn.Dense(10, in_units=32 * 4 * 4, weight_constraint=dense_constraint(kind)))
    return net


MODELS = {"MLP": mlp, "ConvNet": convnet}


def train(model, kind, data, args):
    """A trained network: Adam, ``args.epochs`` epochs, loss on the logits times the temperature."""
    x_train, _, y_train, _ = data
    mx.random.seed(args.seed)
    net = MODELS[model](kind)
    net.initialize(mx.init.Xavier())
    trainer = gc.ConstrainedTrainer(net.collect_params(), "adam", {"learning_rate": args.lr})
    gc.apply_constraints(net)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.default_rng(args.seed)
    for _ in range(args.epochs):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), args.batch_size):
            batch = order[start:start + args.batch_size]
            x, y = mx.nd.array(x_train[batch]), mx.nd.array(y_train[batch])
            with autograd.record():
                loss = loss_fn(net(x) * args.temperature, y)
            loss.backward()
            trainer.step(len(batch))
    return net


def attack(net, x, radius, args):
    """Projected gradient ascent on the cross-entropy of the predicted class, inside each
    example's L2 ball of ``radius``, from ``args.restarts`` random starts: the number of examples
    whose prediction it changed."""
    rng = np.random.default_rng(args.seed)
    x = mx.nd.array(x)
    predicted = net(x).argmax(axis=1)
    limit = mx.nd.array(radius.reshape(-1, 1, 1, 1) * (1 - 1e-6))  # inside the radius, not on it
    changed = np.zeros(len(radius), dtype=bool)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    for _ in range(args.restarts):
        delta = mx.nd.array(rng.standard_normal(x.shape))
        delta = delta * limit * mx.nd.array(rng.uniform(0, 1, (len(radius), 1, 1, 1))) / l2(delta)
        for _ in range(args.steps):
            delta.attach_grad()
            with autograd.record():
                loss = loss_fn(net(x + delta), predicted)
            loss.backward()
            delta = delta + delta.grad / (l2(delta.grad) + 1e-12) * limit * 0.25
            delta = delta * mx.nd.minimum(limit / (l2(delta) + 1e-30), 1.0)
        changed |= (net(x + delta).argmax(axis=1) != predicted).asnumpy().astype(bool)
    return int(changed.sum())


def l2(a):
    """Each example's L2 norm, shaped to broadcast over it."""
    return mx.nd.sqrt((a * a).sum(axis=(1, 2, 3), keepdims=True))


def evaluate(net, data, args):
    """Clean accuracy, Lipschitz bound, certified accuracies and the attack's count."""
    _, x_test, _, y_test = data
    bound = gc.lipschitz_bound(net, (1, 1, 8, 8)).bound
    x = mx.nd.array(x_test)
    correct = net(x).argmax(axis=1).asnumpy() == y_test
    radius = gc.certified_radius(net, x, bound)
    certified = gc.certified_accuracy(net, [(x, y_test)], EPSILONS, bound=bound)
    return {"accuracy": float(correct.mean()), "bound": bound, "certified": certified,
            "median radius": float(np.median(radius[correct])) if correct.any() else 0.0,
            "broken": attack(net, x_test, radius, args)}


def report(results):
    print(f"\n{'model':<10}{'constraint':<14}{'clean':>7}{'Lipschitz':>11}{'median r':>10}  "
          + "".join(f"{'eps ' + format(e, 'g'):>9}" for e in EPSILONS[1:]) + "  attack")
    for (model, kind), r in results.items():
        print(f"{model:<10}{kind:<14}{r['accuracy']:>7.3f}{r['bound']:>11.3g}{r['median radius']:>10.3f}  "
              + "".join(f"{r['certified'][e]:>9.3f}" for e in EPSILONS[1:])
              + f"  {r['broken']} changed")


def plot(results, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MODELS), figsize=(10, 4), sharey=True)
    for ax, model in zip(axes, MODELS):
        for kind in CONSTRAINTS:
            r = results[(model, kind)]
            ax.plot(EPSILONS, [r["certified"][e] for e in EPSILONS], marker="o",
                    label=f"{kind} (L = {r['bound']:.3g})")
        ax.set_title(model)
        ax.set_xlabel("epsilon (L2, pixels in [0, 1])")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("certified accuracy")
    fig.suptitle("Digits: accuracy certified by gc.lipschitz_bound within epsilon")
    fig.tight_layout()
    path = os.path.join(out, "certified.png")
    fig.savefig(path, dpi=90)
    return path


def arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=10.0)
    parser.add_argument("--restarts", type=int, default=10, help="random starts of the attack")
    parser.add_argument("--steps", type=int, default=20, help="gradient steps per start")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--out", default="demo-output", help="directory for the picture")
    return parser.parse_args(argv)


def main():
    args = arguments()
    os.makedirs(args.out, exist_ok=True)
    data = load_data(args.seed)
    results = {}
    for model in args.models:
        for kind in CONSTRAINTS:
            started = time.time()
            results[(model, kind)] = evaluate(train(model, kind, data, args), data, args)
            print(f"{model} with {kind}: trained and certified in {time.time() - started:.0f} s", flush=True)
    report(results)
    if len(args.models) == len(MODELS):
        print(f"\nwrote {plot(results, args.out)}")
    broken = sum(r["broken"] for r in results.values())
    if broken:
        print(f"\nThe attack changed {broken} predictions inside certified radii: a certificate is wrong.")
        return 1
    print("\nNo attack changed a prediction inside its certified radius.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
