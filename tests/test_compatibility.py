"""Files written by gluon-constraints 0.1.0 load into this version (docs/architecture.md).

``tests/data/legacy-0.1.0.*`` were written by 0.1.0 (commit ba1cb65): a network's parameters and
``ConstrainedTrainer.save_states`` after two SGD-momentum steps (the pickle names
``gluon_constraints.optimizer``, ``.constraints`` and ``.reduction``), and the weights 0.1.0
computed after a third step, with the three batches.
"""

import pickle
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import autograd

import gluon_constraints as gc
from gluon_constraints import nn

DATA = Path(__file__).with_name("data")


def legacy_network():
    net = nn.HybridSequential(prefix="legacy_")
    with net.name_scope():
        net.add(nn.Conv2DTranspose(4, 3, groups=2, in_channels=4, weight_constraint=gc.MaxNorm(0.3)),
                nn.Flatten(),
                nn.Dense(5, weight_constraint=gc.Compose([gc.NonNeg(), gc.UnitNorm()]),
                         bias_constraint=gc.MinMaxNorm(0.1, 0.5, rate=0.5)))
    return net


def test_states_saved_by_0_1_0_resume_to_the_same_weights():
    expected = np.load(DATA / "legacy-0.1.0-after.npz")
    net = legacy_network()
    net.load_parameters(str(DATA / "legacy-0.1.0.params"))
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.5, "momentum": 0.9})
    trainer.load_states(str(DATA / "legacy-0.1.0.states"))
    assert isinstance(trainer.optimizer, gc.ConstrainedOptimizer)
    x, y = mx.nd.array(expected["batch2_0"]), mx.nd.array(expected["batch2_1"])
    with autograd.record():
        loss = ((net(x) - y) ** 2).sum()
    loss.backward()
    trainer.step(2)
    for name, param in net.collect_params().items():
        np.testing.assert_allclose(param.data().asnumpy(), expected[name], rtol=1e-6, atol=1e-7,
                                   err_msg=name)


def test_legacy_pickle_names_resolve_to_the_current_classes():
    states, optimizer = pickle.loads((DATA / "legacy-0.1.0.states").read_bytes())
    assert type(optimizer) is gc.ConstrainedOptimizer
    constraints = {type(p.constraint) for p in optimizer.projections.values()}
    assert constraints == {gc.MaxNorm, gc.Compose, gc.MinMaxNorm}
    reductions = [p.reduction for p in optimizer.projections.values()]
    assert all(type(r) is gc.Reduction for r in reductions)
    # the grouped transposed convolution's per-group view survived
    assert any(r.view_shape is not None for r in reductions)
    # unpickled constraints are immutable like new ones
    member = next(p.constraint for p in optimizer.projections.values() if isinstance(p.constraint, gc.MaxNorm))
    try:
        member.max_value = 1.0
    except AttributeError:
        pass
    else:
        raise AssertionError("an unpickled MaxNorm accepted a new max_value")
    assert member.max_value == 0.3


def test_constraint_configs_of_0_1_0_load_and_project_as_they_did():
    # tests/data/legacy-0.1.0-constraints.json: gc.serialize of 0.1.0's families (commit ba1cb65)
    # and what each projected a fixed float32 weight to (docs/compatibility.md)
    import json

    saved = json.loads((DATA / "legacy-0.1.0-constraints.json").read_text())
    weight = np.array(saved["weight"], dtype=np.float32)
    for config, projected in zip(saved["constraints"], saved["projected"]):
        constraint = gc.deserialize(config)
        assert type(constraint).__name__ == config["class_name"]
        again = gc.serialize(constraint)
        assert all(again["config"].get(key) == value for key, value in config["config"].items()
                   if key != "constraints"), config  # old arguments kept; new ones have defaults
        then = np.array(projected, dtype=np.float32)
        now = constraint(mx.nd.array(weight)).asnumpy()
        # float32 rounding: norms summed in another order may move a scale, and each entry, by an ulp or two
        assert (np.abs(now - then) <= 2 * np.spacing(np.abs(then))).all(), config
