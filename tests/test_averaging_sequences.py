"""gc.WeightAverage under random sequences of what training code does (docs/training.md, "Weight
averages"): trainer steps on the kvstore or per device, updates by hand, reads, swaps, copies
edited apart, frozen layers, moves between contexts (reset_ctx), saving and loading. After every
operation each device copy's average equals numpy's recurrence of that copy's weights."""

import random

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import gluon_constraints as gc
from gluon_constraints import _mxnet_compat as compat
from gluon_constraints import nn

CONTEXTS = [mx.cpu(0), mx.cpu(1), mx.cpu(2)]
OPERATIONS = ["step"] * 5 + ["update", "read", "swap", "edit", "freeze", "reset", "save", "load"]


def copies(net):
    """Every parameter copy's weights in float64, by (structural name, context)."""
    return {(name, str(d.context)): d.asnumpy().astype(np.float64)
            for name, p in compat.structural_parameters(net).items() for d in p.list_data()}


def unit_rows(key, value):
    """UnitNorm on the first layer's weight (rows of norm 1), the identity elsewhere."""
    return value / np.linalg.norm(value, axis=1, keepdims=True) if key[0] == "0.weight" else value


class Reference:
    """The averages by numpy: the docstring's recurrences of gc.WeightAverage, per copy."""

    def __init__(self, net, mode, every, start, warmup, project):
        self.mode, self.every, self.start, self.warmup, self.project = mode, every, start, warmup, project
        self.averages = {key: project(key, value) for key, value in copies(net).items()}
        self.updates = self.averaged = 0

    def update(self, net):
        weights, self.updates = copies(net), self.updates + 1
        if self.mode == "ema" and self.updates % self.every == 0:
            decay = min(0.8, (1 + self.updates) / (10 + self.updates)) if self.warmup else 0.8
            rate = 1 - decay ** self.every
        elif self.mode == "swa" and self.updates >= self.start and (self.updates - self.start) % self.every == 0:
            self.averaged += 1
            rate = 1 / self.averaged
        else:
            if self.mode == "swa" and self.averaged == 0:  # before start: the weights themselves
                self.averages.update({key: self.project(key, value) for key, value in weights.items()})
            return
        for key, value in weights.items():  # the copies the network holds; the others are kept
            self.averages[key] = self.project(key, (1 - rate) * self.averages[key] + rate * value)

    def move(self, old, new):
        """reset_ctx from ``old`` to ``new``: a copy that comes back takes the average of the
        first copy (in context order) that stayed, else of the first it moved from."""
        old, new = [str(c) for c in old], [str(c) for c in new]
        source = next((c for c in map(str, CONTEXTS) if c in new and c in old),
                      next(c for c in map(str, CONTEXTS) if c in old))
        for key in self.averages:
            if key[1] in new and key[1] not in old:
                self.averages[key] = self.averages[(key[0], source)].copy()


@pytest.mark.parametrize("seed", range(40))
def test_random_sequences_keep_every_copys_average(seed, tmp_path):
    rng = random.Random(seed)
    mode, every, start = rng.choice(["ema", "swa"]), rng.choice([1, 1, 2, 3]), rng.choice([1, 2, 4])
    warmup, unit, contexts = rng.random() < 0.3, rng.random() < 0.4, CONTEXTS[:rng.choice([2, 3])]
    mx.random.seed(seed)
    net = nn.HybridSequential()
    net.add(nn.Dense(6, in_units=5, activation="tanh", weight_constraint=gc.UnitNorm() if unit else None),
            nn.BatchNorm(in_channels=6), nn.Dense(3, in_units=6))
    net.initialize(mx.init.Normal(1.0), ctx=contexts)
    gc.apply_constraints(net)
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.05},
                                    update_on_kvstore=rng.choice([None, None, False]))
    ema = gc.WeightAverage(net, decay=0.8, mode=mode, every=every, start=start, warmup=warmup, trainer=trainer)
    reference = Reference(net, mode, every, start, warmup, unit_rows if unit else (lambda key, value: value))
    held, saved, done = list(contexts), None, []
    for operation in ["step"] + [rng.choice(OPERATIONS) for _ in range(13)]:
        done.append(operation)
        if operation == "step":
            parts = gluon.utils.split_and_load(mx.nd.random.normal(shape=(12, 5)), held)
            with autograd.record():
                losses = [(net(part) ** 2).sum() for part in parts]
            for loss in losses:
                loss.backward()
            trainer.step(12)
            reference.update(net)
        elif operation == "update":
            ema.update()
            reference.update(net)
        elif operation == "read":
            ema.averages
        elif operation == "swap":
            before = copies(net)
            with ema.swapped():
                assert all(np.array_equal(value, ema.averages[key].asnumpy()) for key, value in copies(net).items())
            assert all(value.tobytes() == before[key].tobytes() for key, value in copies(net).items())
        elif operation == "edit":
            context = rng.choice(held)
            net[0].weight.data(context)[:] += 0.1
        elif operation == "freeze":
            net[0].weight.grad_req = "null" if net[0].weight.grad_req == "write" else "write"
        elif operation == "reset":
            moved = rng.sample(contexts, rng.randint(1, len(contexts)))
            net.collect_params().reset_ctx(moved)
            reference.move(held, moved)
            held = moved
        elif operation == "save":
            ema.save(str(tmp_path / "ema.state"))
            first = str(held[0])
            saved = ({key: reference.averages[(key[0], first)].copy() for key in reference.averages},
                     reference.updates, reference.averaged)
        elif operation == "load" and saved is not None:
            ema.load(str(tmp_path / "ema.state"))
            reference.averages = {key: value.copy() for key, value in saved[0].items()}
            reference.updates, reference.averaged = saved[1], saved[2]
        averages = ema.averages
        for key, value in reference.averages.items():  # float32 arithmetic over a few updates
            if key[1] in map(str, held):
                np.testing.assert_allclose(averages[key].asnumpy(), value, rtol=1e-4, atol=1e-5,
                                           err_msg=f"{key} after {done}")
