"""Max-norm and learning rates (Srivastava et al. 2014) on scikit-learn's handwritten digits.

The Dropout paper trains dropout networks with large learning rates and momentum and bounds the
norm of each hidden unit's incoming weights by a constant c (max-norm): the bound keeps the
weights from blowing up, so larger learning rates become usable. This demo sweeps the learning
rate (SGD, momentum 0.95, the rate divided by 1 + epoch / 5), with and without
``MaxNorm(3)`` on every weight matrix, over several seeds, and reports the mean and spread of the
test error per learning rate and where unconstrained training diverges. It draws:

- ``lr-sweep.png``: test error against learning rate, both runs;
- ``unit-norms.png``: histograms of the first layer's unit norms during training at one high
  learning rate, both runs;
- ``clipped.png``: the fraction of first-layer units each projection clipped, read from the
  trainer's monitoring (``monitor=True``, ``constraint_stats()``), per learning rate.

Inputs are the 8x8 pixel intensities scaled to [0, 1] and centred (the training set's mean
subtracted): with nonnegative inputs, large steps turn whole units negative and their ReLUs never
fire again, with or without max-norm (see docs/index.md). Dropout masks are drawn on the host
for the whole batch, so ``--contexts 2`` (each batch split over two CPU contexts, like two GPUs)
trains the same network as one context. No download: the digits ship with scikit-learn.

Run ``make demo`` (or ``python examples/digits_maxnorm.py --help``).
"""

import argparse
import os
import sys

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import gluon_constraints as gc
from gluon_constraints import nn

HIDDEN = 256
KEEP_INPUT, KEEP_HIDDEN = 0.8, 0.5  # the paper's retention probabilities


class DropoutMLP(gluon.HybridBlock):
    """64-256-256-10 ReLU network with dropout masks given as inputs (drawn on the host)."""

    def __init__(self, max_norm=None, **kwargs):
        super().__init__(**kwargs)
        constraint = gc.MaxNorm(max_norm) if max_norm else None
        with self.name_scope():
            self.hidden1 = nn.Dense(HIDDEN, activation="relu", in_units=64, weight_constraint=constraint)
            self.hidden2 = nn.Dense(HIDDEN, activation="relu", in_units=HIDDEN, weight_constraint=constraint)
            self.output = nn.Dense(10, in_units=HIDDEN, weight_constraint=constraint)

    def hybrid_forward(self, F, x, mask_input, mask1, mask2):
        h = self.hidden1(x * mask_input)
        h = self.hidden2(h * mask1)
        return self.output(h * mask2)


def load_data(seed=0):
    """Train/test split (70/30, stratified) of the digits, scaled to [0, 1] and centred."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.3, random_state=seed, stratify=digits.target)
    mean = x_train.mean(axis=0)
    return x_train - mean, x_test - mean, y_train, y_test


def masks(rng, batch):
    """Inverted-dropout masks for the input and both hidden layers of one batch."""
    return [(rng.random((batch, width)) < keep).astype(np.float32) / keep
            for width, keep in ((64, KEEP_INPUT), (HIDDEN, KEEP_HIDDEN), (HIDDEN, KEEP_HIDDEN))]


def build(max_norm, seed, ctx, dtype="float32"):
    """The network with fixed initial weights for ``seed`` (the same on every context)."""
    mx.random.seed(seed)
    net = DropoutMLP(max_norm)
    net.initialize(mx.init.Xavier(magnitude=2.0), ctx=ctx)
    net.cast(dtype)
    net.hybridize()
    return net


def evaluate(net, x, y, ctx):
    """Test error (a network whose outputs are not finite counts as chance, 0.9)."""
    dtype = net.hidden1.weight.dtype
    ones = [mx.nd.ones((x.shape[0], w), ctx=ctx, dtype=dtype) for w in (64, HIDDEN, HIDDEN)]
    out = net(mx.nd.array(x, ctx=ctx, dtype=dtype), *ones).asnumpy()
    if not np.isfinite(out).all():
        return 0.9
    return float((out.argmax(axis=1) != y).mean())


def unit_norms(net):
    """L2 norm of each first-layer unit's incoming weights."""
    w = net.hidden1.weight.data().asnumpy().astype(np.float64)
    return np.sqrt((w ** 2).sum(axis=1))


def batches(x, y, batch_size, rng):
    """One epoch of shuffled batches with their dropout masks (drawn on the host)."""
    order = rng.permutation(len(x))
    for at in range(0, len(x) - batch_size + 1, batch_size):
        part = order[at:at + batch_size]
        yield x[part], y[part].astype(np.float32), masks(rng, batch_size)


def train(lr, max_norm, seed, data, args, progress=None, trainer_factory=None, part=None,
          step_size=None):
    """Train one network; return its test error, whether it diverged, and its history.

    ``trainer_factory(params, options)`` builds the trainer (default: a ``ConstrainedTrainer``
    with monitoring, or a plain ``gluon.Trainer`` without max-norm); ``part(arrays)`` selects
    this process's share of each batch (distributed workers), default all of it;
    ``step_size`` is the batch size given to ``trainer.step`` (default the whole batch).
    """
    x_train, x_test, y_train, y_test = data
    ctx = [mx.cpu(i) for i in range(args.contexts)]
    net = build(max_norm, seed, ctx, args.dtype)
    options = {"learning_rate": lr, "momentum": args.momentum}
    monitored = max_norm and trainer_factory is None
    if trainer_factory is not None:
        trainer = trainer_factory(net.collect_params(), options)
    elif max_norm:
        trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", options, monitor=True)
    else:
        trainer = gluon.Trainer(net.collect_params(), "sgd", options)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.default_rng(seed)
    history = {"norms": [unit_norms(net)], "clipped": [], "loss": []}
    diverged = False
    for epoch in range(args.epochs):
        trainer.set_learning_rate(lr / (1 + epoch / 5))
        total, count = 0.0, 0
        for step, (xb, yb, mb) in enumerate(batches(x_train, y_train, args.batch_size, rng)):
            arrays = [xb, yb] + mb
            if part is not None:
                arrays = part(arrays)
            loaded = [gluon.utils.split_and_load(mx.nd.array(a, dtype=args.dtype), ctx) for a in arrays]
            with autograd.record():
                losses = [loss_fn(net(x, *m), y) for x, y, *m in zip(*loaded)]
            for loss in losses:
                loss.backward()
            trainer.step(step_size or args.batch_size)
            total += sum(float(loss.sum().asscalar()) for loss in losses)
            count += sum(loss.shape[0] for loss in losses)
            if monitored and step % 10 == 9:
                history["clipped"].append(
                    trainer.constraint_stats()[net.hidden1.weight.name]["moved"].asscalar())
        history["loss"].append(total / count)
        history["norms"].append(unit_norms(net))
        diverged = not np.isfinite(total)
        if progress is not None:
            progress.set_postfix(loss=f"{total / count:.3f}",
                                 test_acc=f"{1 - evaluate(net, x_test, y_test, ctx[0]):.3f}")
            progress.update(1)
        if diverged:
            if progress is not None:
                progress.update(args.epochs - epoch - 1)
            break
    if max_norm and not diverged:
        largest = max(unit_norms_of(p) for p in net.collect_params(".*weight").values())
        if largest > max_norm * (1 + 1e-5):
            raise SystemExit(f"a unit norm of {largest} exceeds MaxNorm({max_norm})")
    return {"error": evaluate(net, x_test, y_test, ctx[0]), "diverged": diverged, **history}


def unit_norms_of(param):
    """Largest unit norm of a weight matrix over every device copy."""
    return max(float(np.sqrt((a.asnumpy().astype(np.float64) ** 2).sum(axis=1)).max())
               for a in param.list_data())


def sweep(args, data):
    """{(lr, constrained): [result per seed]} for every learning rate and seed."""
    runs = [(lr, bound, seed) for lr in args.lrs for bound in (None, args.max_norm)
            for seed in range(args.seeds)]
    results = {}
    with tqdm(total=len(runs) * args.epochs, unit="epoch", file=sys.stdout) as progress:
        for lr, bound, seed in runs:
            progress.set_description(f"lr {lr:<5g} {'MaxNorm' if bound else 'plain':<7} seed {seed}")
            results.setdefault((lr, bool(bound)), []).append(train(lr, bound, seed, data, args, progress))
    return results


def report(results, args):
    """The table of test errors per learning rate."""
    print(f"\ntest error (mean +- std over {args.seeds} seeds, {args.contexts} context(s)); "
          f"'diverged': runs whose loss became infinite or NaN")
    print(f"{'learning rate':>13} | {'no constraint':^24} | {f'MaxNorm({args.max_norm:g})':^24}")
    for lr in args.lrs:
        cells = []
        for constrained in (False, True):
            runs = results[(lr, constrained)]
            errors = [r["error"] for r in runs]
            diverged = sum(r["diverged"] for r in runs)
            cells.append(f"{np.mean(errors):.4f} +- {np.std(errors):.4f}"
                         + (f" ({diverged} diverged)" if diverged else ""))
        print(f"{lr:>13g} | {cells[0]:<24} | {cells[1]:<24}")


def plot(results, args):
    """The three pictures; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(args.out, exist_ok=True)
    paths = [os.path.join(args.out, name) for name in ("lr-sweep.png", "unit-norms.png", "clipped.png")]
    labels = {False: "no constraint", True: f"MaxNorm({args.max_norm:g})"}
    colours = {False: "#c44e52", True: "#4c72b0"}

    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for constrained in (False, True):
        errors = np.array([[r["error"] for r in results[(lr, constrained)]] for lr in args.lrs])
        axes.errorbar(args.lrs, errors.mean(axis=1), yerr=errors.std(axis=1), marker="o", capsize=3,
                      color=colours[constrained], label=labels[constrained])
        for lr, runs in ((lr, results[(lr, constrained)]) for lr in args.lrs):
            diverged = sum(r["diverged"] for r in runs)
            if diverged:
                axes.annotate(f"{diverged}/{len(runs)} diverged", (lr, 0.9), fontsize=7,
                              color=colours[constrained], ha="center",
                              xytext=(0, -12 if constrained else 6), textcoords="offset points")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("learning rate (SGD, momentum %g)" % args.momentum)
    axes.set_ylabel("test error")
    axes.set_title(f"Digits, dropout MLP, {args.epochs} epochs, {args.seeds} seeds")
    axes.legend()
    figure.tight_layout()
    figure.savefig(paths[0], dpi=110)
    plt.close(figure)

    lr = args.histogram_lr
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for axis, constrained in zip(axes, (False, True)):
        norms = results[(lr, constrained)][0]["norms"]
        shown = sorted({0, len(norms) // 3, 2 * len(norms) // 3, len(norms) - 1})
        finite = [n[np.isfinite(n)] for n in norms]
        top = max(float(f.max()) for f in finite if f.size) * 1.05
        for epoch in shown:
            axis.hist(np.clip(finite[epoch], 0, top), bins=40, range=(0, top), alpha=0.5,
                      label=f"after epoch {epoch}" if epoch else "initial")
        if constrained:
            axis.axvline(args.max_norm, color="black", linestyle="--", linewidth=0.8)
        axis.set_title(f"{labels[constrained]}, lr {lr:g}, seed 0")
        axis.set_xlabel("L2 norm of a first-layer unit's incoming weights")
        axis.legend(fontsize=7)
    axes[0].set_ylabel("units")
    figure.tight_layout()
    figure.savefig(paths[1], dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(6.4, 3.8))
    for lr in args.lrs:
        clipped = results[(lr, True)][0]["clipped"]
        if clipped:
            axes.plot(np.arange(1, len(clipped) + 1) * 10, clipped, label=f"lr {lr:g}")
    axes.set_xlabel("update")
    axes.set_ylabel("fraction of first-layer units clipped")
    axes.set_title(f"MaxNorm({args.max_norm:g}): units the projection rescaled (seed 0)")
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(paths[2], dpi=110)
    plt.close(figure)
    return paths


def arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-norm", type=float, default=3.0)
    parser.add_argument("--momentum", type=float, default=0.95)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--contexts", type=int, default=1,
                        help="number of CPU contexts to split each batch over (like GPUs)")
    parser.add_argument("--histogram-lr", type=float, default=0.3,
                        help="learning rate whose unit norms unit-norms.png shows")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"],
                        help="float64 (default): one and several contexts give the same numbers")
    parser.add_argument("--out", default="demo-output", help="directory for the pictures")
    args = parser.parse_args(argv)
    if args.histogram_lr not in args.lrs:
        args.histogram_lr = args.lrs[-1]
    return args


def main():
    args = arguments()
    data = load_data()
    results = sweep(args, data)
    report(results, args)
    paths = plot(results, args)
    print("\npictures: " + ", ".join(os.path.abspath(p) for p in paths))


if __name__ == "__main__":
    main()
