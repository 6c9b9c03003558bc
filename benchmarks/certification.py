"""What certifying a network costs: ``gc.lipschitz_bound`` against forward passes.

``python -m benchmarks.certification`` prints, for the model zoo's ResNet-18 (V1) at input sizes
32, 64 and 224, the median time of ``gc.lipschitz_bound(net, (1, 3, n, n))`` and of a forward pass
of a batch of 32 (inference mode), their ratio (how many batch-32 forward passes one bound
costs), and the share of the bound's time spent in the convolutions' spectra. The bound is
exact per convolution (one Gram matrix per frequency and its largest eigenvalue, certified;
``docs/certification.md``), so its cost grows with channels cubed and with the input area, where
a forward pass grows with channels squared.

A second table (``--projection``) times one ``OperatorNorm`` projection of a 3x3 kernel that
a gradient step moved 10% outside the set, for the channel counts and input sizes of a small
ConvNet and of ResNet-18's stages.
"""

from __future__ import annotations

import argparse
import statistics
import time

import mxnet as mx
import numpy as np
from mxnet import autograd
from mxnet.gluon.model_zoo import vision

import gluon_constraints as gc
from gluon_constraints.catalogue import spectrum


def median_time(function, repeats):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bound_costs(sizes, repeats):
    net = vision.resnet18_v1()
    net.initialize(mx.init.Xavier())
    print(f"{'input':>7} {'bound (s)':>10} {'forward b32 (s)':>16} {'ratio':>7} {'spectra share':>14}")
    for size in sizes:
        batch = mx.nd.random.uniform(shape=(32, 3, size, size))

        def forward():
            with autograd.pause(train_mode=False):
                net(batch).wait_to_read()

        forward()
        spent = []
        norm = spectrum.conv_operator_norm

        def timed_norm(*args, **kwargs):
            started = time.perf_counter()
            result = norm(*args, **kwargs)
            spent.append(time.perf_counter() - started)
            return result

        from gluon_constraints.certify import lipschitz
        lipschitz.conv_operator_norm = timed_norm
        try:
            bound = median_time(lambda: gc.lipschitz_bound(net, (1, 3, size, size)), repeats)
        finally:
            lipschitz.conv_operator_norm = norm
        share = sum(spent) / repeats / bound
        forward_time = median_time(forward, repeats)
        print(f"{size:>7} {bound:>10.2f} {forward_time:>16.3f} {bound / forward_time:>7.1f} {share:>14.0%}")


def projection_costs(repeats):
    rng = np.random.default_rng(0)
    print(f"{'kernel':>18} {'input':>7} {'projection (ms)':>16}")
    for channels, size in ((16, 8), (32, 8), (64, 56), (128, 28), (256, 14), (512, 7)):
        constraint = gc.OperatorNorm(1.0, input_shape=(size, size), padding=1)
        kernel = rng.standard_normal((channels, channels, 3, 3))
        kernel *= 1.1 / gc.conv_operator_norm(kernel, (size + 2, size + 2))
        weight = mx.nd.array(kernel, dtype=np.float64)
        seconds = median_time(lambda: constraint(weight).wait_to_read(), repeats)
        print(f"{f'({channels}, {channels}, 3, 3)':>18} {size:>7} {seconds * 1e3:>16.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 224])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--projection", action="store_true", help="time OperatorNorm projections instead")
    args = parser.parse_args()
    if args.projection:
        projection_costs(args.repeats)
    else:
        bound_costs(args.sizes, args.repeats)


if __name__ == "__main__":
    main()
