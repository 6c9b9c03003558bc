"""Projection statistics (docs/training.md#monitoring): values against numpy on the kernel and
stock paths, in every multi-device configuration, without host synchronisation."""

import csv
import logging
import re

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.gluon import nn as plain_nn

import gluon_constraints as gc
from gluon_constraints import nn
from gluon_constraints.kernels.projection import kernel_item, project_in_place
from steps import backward_squared_output, forbid_host_synchronisation, squared_output_step

TWO = [mx.cpu(0), mx.cpu(1)]
CONFIGS = [([mx.cpu(0)], None), (TWO, True), (TWO, False)]
IDS = ["1ctx", "2ctx-uokv", "2ctx-no-uokv"]
BOUND = 0.9


def layers(module, constrained):
    """Dense (fused SGD), Conv2D (filters as rows), Conv2DTranspose (the kernel's strided
    units: columns), Dense with NonNeg (the kernel's elementwise mode per unit); plain ones for
    the reference."""
    c = (lambda k: {"weight_constraint": k}) if constrained else (lambda k: {})
    net = module.HybridSequential(prefix="net_")
    with net.name_scope():
        net.add(module.Conv2D(4, 3, in_channels=2, **c(gc.MaxNorm(BOUND))),
                module.Conv2DTranspose(3, 2, in_channels=4, **c(gc.MaxNorm(BOUND))),
                module.Flatten(),
                module.Dense(6, in_units=3 * 5 * 5, **c(gc.MaxNorm(BOUND))),
                module.Dense(2, in_units=6, **c(gc.NonNeg())))
    return net


def initialized(net, ctx):
    net.initialize(mx.init.Normal(0.3), ctx=ctx)
    rng = np.random.default_rng(3)
    for param in net.collect_params().values():  # unit norms spread around the bound
        units = param.shape[1] if param.name.endswith("conv1_weight") else param.shape[0]
        scale = rng.uniform(0.5, 1.3, units) / np.sqrt(np.prod(param.shape) / units)
        w = rng.normal(0, 1, param.shape)
        w = (np.moveaxis(w, 1, -1) * scale).swapaxes(1, -1) if param.name.endswith("conv1_weight") else \
            w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        param.set_data(mx.nd.array(w))
    return net


def one_step(net, trainer, ctx):
    squared_output_step(net, trainer, mx.nd.array(np.random.default_rng(9).normal(0, 1, (4, 2, 6, 6))), ctx)


def unit_norms(w, axes):
    return np.sqrt((w.astype(np.float64) ** 2).sum(axis=axes))


AXES = {"net_conv0_weight": (1, 2, 3), "net_conv1_weight": (0, 2, 3),
        "net_dense0_weight": (1,), "net_dense1_weight": (1,)}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("ctx,uokv", CONFIGS, ids=IDS)
def test_stats_match_numpy_on_the_unprojected_update(optimizer, ctx, uokv):
    options = {"learning_rate": 0.001, "momentum": 0.9} if optimizer == "sgd" else {"learning_rate": 0.01}
    plain = initialized(layers(plain_nn, False), [mx.cpu(0)])
    one_step(plain, gluon.Trainer(plain.collect_params(), optimizer, dict(options)), [mx.cpu(0)])
    net = initialized(layers(nn, True), ctx)
    trainer = gc.ConstrainedTrainer(net.collect_params(), optimizer, dict(options),
                                    update_on_kvstore=uokv, monitor=True)
    one_step(net, trainer, ctx)
    stats = trainer.constraint_stats()
    assert sorted(stats) == sorted(AXES)
    for name, axes in AXES.items():
        updated = plain.collect_params()[name].data().asnumpy()
        if name == "net_dense1_weight":  # NonNeg: which units changed, L2 norms after
            projected = updated * (updated >= 0)
            moved = np.mean(np.any(projected != updated, axis=axes))
        else:
            n = unit_norms(updated, axes)
            moved = np.mean(n > BOUND * (1 + 2.0**-18))
            projected = np.minimum(n, BOUND)
        after = unit_norms(projected, axes) if name == "net_dense1_weight" else projected
        got = {k: v.asscalar() for k, v in stats[name].items()}
        assert all(v.context == ctx[0] and v.shape == (1,) for v in stats[name].values())
        assert 0 < moved < 1 or name == "net_dense1_weight", (name, moved)  # the check means something
        assert got["moved"] == pytest.approx(moved, abs=1e-6), name
        assert got["max_norm"] == pytest.approx(after.max(), rel=1e-4), name
        assert got["mean_norm"] == pytest.approx(after.mean(), rel=1e-4), name


def test_kernel_and_stock_statistics_agree():
    rng = np.random.default_rng(1)
    for shape, constraint, reduction in [((8, 5), gc.MaxNorm(1.0, ord=1), gc.Reduction((1,))),
                                         ((6, 2, 3, 3), gc.MaxNorm(1.5), gc.Reduction((1, 2, 3))),
                                         ((7, 4), gc.Clip(-0.2, 0.2), gc.Reduction((1,))),
                                         ((5, 6), gc.UnitNorm(ord="inf"), gc.Reduction((1,))),
                                         ((4, 6, 3, 3), gc.MaxNorm(1.5), gc.Reduction((0, 2, 3))),
                                         ((70, 6), gc.NonNeg(), gc.Reduction((0,)))]:
        w = rng.normal(0, 1, shape).astype(np.float32)
        assert kernel_item(mx.nd.array(w), constraint, reduction, monitored=True) is not None
        results = []
        for fused in (True, False):
            array, out = mx.nd.array(w), mx.nd.zeros((3,))
            project_in_place([(array, constraint, reduction)], use_fused=fused, stats=[out])
            results.append(out.asnumpy())
        np.testing.assert_allclose(results[0], results[1], rtol=1e-5, err_msg=repr(constraint))


def test_spectral_norm_stats_are_those_of_its_rows():
    net = nn.Dense(5, in_units=7, weight_constraint=gc.SpectralNorm(0.5))
    net.initialize(mx.init.Normal(1.0))
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.01}, monitor=True)
    with autograd.record():
        loss = net(mx.nd.ones((2, 7))).sum()
    loss.backward()
    trainer.step(2)
    got = {k: v.asscalar() for k, v in trainer.constraint_stats()[net.weight.name].items()}
    n = unit_norms(net.weight.data().asnumpy(), (1,))
    assert got["moved"] == 1.0  # a rescaled matrix changes every row
    assert got["max_norm"] == pytest.approx(n.max(), rel=1e-5)
    assert got["mean_norm"] == pytest.approx(n.mean(), rel=1e-5)


@pytest.mark.parametrize("ctx,uokv", CONFIGS, ids=IDS)
def test_monitoring_makes_no_host_synchronisation(ctx, uokv, monkeypatch):
    net = initialized(layers(nn, True), ctx)
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.5, "momentum": 0.9},
                                    update_on_kvstore=uokv, monitor=True)
    one_step(net, trainer, ctx)
    mx.nd.waitall()
    backward_squared_output(net, mx.nd.array(np.ones((4, 2, 6, 6))), ctx)
    calls = forbid_host_synchronisation(monkeypatch)
    trainer.step(4)
    trainer.constraint_stats()
    monkeypatch.undo()
    assert calls == []


def test_constraint_stats_needs_monitoring():
    net = initialized(layers(nn, True), [mx.cpu(0)])
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    with pytest.raises(gc.EnforcementError, match="constraint_stats\\(\\) needs a trainer built with monitor=True"):
        trainer.constraint_stats()
    assert trainer.optimizer.stats == {}  # off: nothing recorded


def test_estimator_handler_logs_and_writes_every_epoch(tmp_path):
    # Numbered as the Estimator numbers its own epochs: its "[Epoch 0] Finished" line and ours
    # for the same epoch carry the same number.
    from mxnet.gluon.contrib.estimator import Estimator

    net = nn.Dense(4, in_units=3, weight_constraint=gc.MaxNorm(0.2))
    net.initialize(mx.init.Normal(1.0))
    data = gluon.data.DataLoader(gluon.data.ArrayDataset(mx.nd.ones((8, 3)), mx.nd.zeros((8, 4))), batch_size=4)
    est = Estimator(net, gluon.loss.L2Loss(), trainer=gluon.Trainer(net.collect_params(), "sgd"))
    writer = gc.CSVWriter(tmp_path / "stats.csv")
    handler = gc.ConstraintHandler(monitor=True, writers=[writer])
    records = []
    collect = logging.Handler()
    collect.emit = records.append
    est.logger.addHandler(collect)  # the Estimator's own logger, outside logging's hierarchy
    est.fit(data, epochs=2, event_handlers=[handler])
    epochs = [re.match(r"\[Epoch (\d+)\] (Finished|constraints)", r.getMessage()) for r in records]
    assert sorted((m.group(1), m.group(2)) for m in epochs if m) == [("0", "Finished"), ("0", "constraints"),
                                                                     ("1", "Finished"), ("1", "constraints")]
    rows = list(csv.DictReader(open(tmp_path / "stats.csv")))
    assert [r["step"] for r in rows] == ["0", "1"] and {r["parameter"] for r in rows} == {net.weight.name}
    n = unit_norms(net.weight.data().asnumpy(), (1,))
    assert float(rows[-1]["max_norm"]) == pytest.approx(n.max(), rel=1e-5)
    assert float(rows[-1]["mean_norm"]) == pytest.approx(n.mean(), rel=1e-5)


def test_tensorboard_writer_writes_scalars(tmp_path):
    import struct

    from tensorboardX.proto.event_pb2 import Event

    writer = gc.TensorBoardWriter(str(tmp_path))
    writer.write(3, {"w": {"moved": 0.25, "max_norm": 3.0, "mean_norm": 2.0}})
    writer.close()
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    scalars, at = {}, 0
    while at < len(data):  # TFRecord: length (8 bytes), its CRC (4), the record, its CRC (4)
        (length,) = struct.unpack("<Q", data[at:at + 8])
        event = Event.FromString(data[at + 12:at + 12 + length])
        at += 16 + length
        for value in event.summary.value:
            scalars[value.tag] = (event.step, value.simple_value)
    assert scalars == {"constraints/w/moved": (3, 0.25), "constraints/w/max_norm": (3, 3.0),
                       "constraints/w/mean_norm": (3, 2.0)}


@pytest.mark.parametrize("value", ["yes", "false", 1, 0, None], ids=repr)
def test_monitor_takes_booleans_only(value):
    # "false" is a true value in Python: refused, like every other non-bool, everywhere monitor is taken.
    net = nn.Dense(2, in_units=2, weight_constraint=gc.MaxNorm(1.0))
    net.initialize()
    message = r"monitor must be True or False: got " + re.escape(repr(value))
    with pytest.raises(gc.ConstraintArgumentError, match=message):
        gc.ConstrainedTrainer(net.collect_params(), "sgd", monitor=value)
    with pytest.raises(gc.ConstraintArgumentError, match=message):
        gc.enforce(gluon.Trainer(net.collect_params(), "sgd"), monitor=value)
    with pytest.raises(gc.ConstraintArgumentError, match=message):
        gc.ConstraintHandler(monitor=value)
