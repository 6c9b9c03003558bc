"""Whether the wheel's wider x86-64 levels pay: the fused kernel built for each level, timed.

``python -m benchmarks.kernel_levels`` prints, for each model and optimizer, the median time of
10 fused updates (``trainer.update`` with the gradients ready: the optimizer's update and the
projection in one pass) and of one projection alone (``gc.apply_constraints``), for every level
of :data:`gluon_constraints.kernels.sources.VARIANTS` this processor runs, with the ratio to the
SSE2 baseline (``x86-64``): medians of interleaved repetitions in one run. The libraries are the
installed wheel's own, or built for the run when the package has none (a source tree).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Callable, Dict, List

import mxnet as mx

import gluon_constraints as gc
from gluon_constraints.kernels import library, sources

from .enforcement import OPTIMIZERS, STEPS, Setup, timed


def level_libraries(scratch: Path) -> Dict[str, Path]:
    """Each level this processor runs, with its library (the wheel's, else built into ``scratch``)."""
    levels = [v for v in sources.VARIANTS if sources.processor_flags() >= v.features]
    prebuilt, _ = library.prebuilt_library()
    if prebuilt is not None:
        return {v.march: prebuilt.with_name(f"lib-{v.march}.so") for v in levels}
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise SystemExit("benchmarks.kernel_levels needs the wheel's prebuilt kernel or a C++ compiler (set CXX)")
    manifest, failure = sources.build_variants(scratch, compiler, levels)
    if manifest is None:
        raise SystemExit(failure)
    return {v.march: scratch / f"lib-{v.march}.so" for v in levels}


def measure(model: str, optimizer: str, kernels: Dict[str, library.Kernel], repeats: int) -> Dict[str, Dict]:
    """Median milliseconds of 10 fused updates and of one projection, per level."""
    setups = {}
    for level, loaded in kernels.items():  # each trainer keeps the kernel loaded when it is made
        library._loaded = loaded
        setup = Setup(model, [mx.cpu()], "gluon-constraints", optimizer=optimizer)
        name, settings = OPTIMIZERS[optimizer]
        setup.trainer = gc.ConstrainedTrainer(setup.net.collect_params(), name, dict(settings),
                                              update_on_kvstore=False)
        setup.backward()
        setups[level] = setup

    def updates(setup: Setup) -> Callable[[], None]:
        arrays = [a for p in setup.net.collect_params().values() if p.grad_req != "null" for a in p.list_data()]

        def run() -> None:
            for _ in range(STEPS):
                for array in arrays:  # the gradients are reused: fresh, as a backward pass leaves them
                    array._fresh_grad = True
                setup.trainer.update(setup.batch)
        return run

    samples: Dict[str, Dict[str, List[float]]] = {level: {"update": [], "project": []} for level in kernels}
    for _ in range(repeats + 1):  # the first round warms up
        for level, setup in setups.items():
            library._loaded = kernels[level]
            samples[level]["update"].append(timed(updates(setup)))
            samples[level]["project"].append(timed(lambda: gc.apply_constraints(setup.net)))
    return {level: {kind: statistics.median(times[1:]) * 1e3 for kind, times in kinds.items()}
            for level, kinds in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["paper-mlp", "resnet18"])
    parser.add_argument("--optimizers", nargs="+", default=["sgd-momentum", "adam"], choices=list(OPTIMIZERS))
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        kernels = {level: library.loaded(path) for level, path in level_libraries(Path(scratch)).items()}
        print(f"levels: {', '.join(kernels)}; medians of {args.repeats} interleaved repetitions, "
              f"ms (ratio to x86-64)")
        print(f"{'model':<10} {'optimizer':<13} {'level':<10} {f'{STEPS} updates':>16} {'projection':>16}")
        for model in args.models:
            for optimizer in args.optimizers:
                result = measure(model, optimizer, kernels, args.repeats)
                base = result["x86-64"]
                for level, times in result.items():
                    print(f"{model:<10} {optimizer:<13} {level:<10} "
                          f"{times['update']:9.2f} ({times['update'] / base['update']:4.2f}) "
                          f"{times['project']:9.2f} ({times['project'] / base['project']:4.2f})")


if __name__ == "__main__":
    main()
