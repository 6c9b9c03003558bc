"""Constraints kept with the model: config, export/imports, loading checkpoints (docs/layers.md,
"Saving and loading constraints with a model")."""

import json
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import gluon_constraints as gc
import reference as ref
from gluon_constraints import nn


def build(constrained=True):
    """Dense -> transposed conv -> Dense, with or without constraints, in gc.nn or plain Gluon."""
    layers = nn if constrained else gluon.nn
    extra = (lambda **kw: kw) if constrained else (lambda **kw: {})
    net = layers.HybridSequential()
    net.add(layers.Dense(2 * 3 * 3, in_units=4, **extra(weight_constraint=gc.MaxNorm(0.5),
                                                        bias_constraint="non_neg")),
            layers.HybridLambda(lambda F, x: F.reshape(x, (0, 2, 3, 3))),
            layers.Conv2DTranspose(3, 2, in_channels=2,
                                   **extra(weight_constraint=[gc.NonNeg(), gc.MaxNorm(0.7)])),
            layers.Flatten(),
            layers.Dense(2, in_units=3 * 4 * 4, **extra(weight_constraint=gc.UnitNorm())))
    net.initialize(mx.init.Normal(1.0))
    return net


def copy_weights(source, target):
    for (_, a), (_, b) in zip(sorted(source.collect_params().items(), key=lambda kv: kv[0][-20:]),
                              sorted(target.collect_params().items(), key=lambda kv: kv[0][-20:])):
        b.set_data(a.data())


def same_weights(source, target):
    for a, b in zip(source.collect_params().values(), target.collect_params().values()):
        b.set_data(a.data())


def projected(net):
    gc.apply_constraints(net)
    return [p.data().asnumpy() for p in net.collect_params().values()]


def test_the_config_is_json_and_records_layer_and_axes():
    net = build()
    config = json.loads(json.dumps(gc.constraints_config(net)))
    assert config["format"] == "gluon-constraints/constraints-1"
    entries = config["parameters"]
    assert len(entries) == 4
    conv = next(e for n, e in entries.items() if "conv" in n)
    assert conv["layer"] == "Conv2DTranspose" and conv["path"] == "2.weight"
    assert conv["axes"] == [0, 2, 3] and conv["view_shape"] is None  # all but the output channel
    assert gc.deserialize(conv["constraint"]) == gc.Compose([gc.NonNeg(), gc.MaxNorm(0.7)])
    bias = next(e for n, e in entries.items() if n.endswith("bias"))
    assert bias["constraint"] == {"class_name": "NonNeg", "config": {}} and "axes" not in bias


def test_a_rebuilt_plain_network_gets_the_same_constraints_and_projections():
    original = build()
    config = json.loads(json.dumps(gc.constraints_config(original)))
    rebuilt = build(constrained=False)  # new global names (dense3_...), same structure
    assert not set(rebuilt.collect_params()) & set(original.collect_params())
    attached = gc.constrain_from_config(rebuilt, config)
    assert len(attached) == 4
    same_weights(original, rebuilt)
    for ours, theirs in zip(projected(original), projected(rebuilt)):
        np.testing.assert_array_equal(ours, theirs)


def test_export_and_imports_keep_the_constraints_and_their_axes(tmp_path):
    net = build()
    net.hybridize()
    net(mx.nd.ones((1, 4)))
    written = gc.export(net, str(tmp_path / "model"))
    assert written == str(tmp_path / "model-constraints.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MXNet's own note about unknown types
        imported = gc.imports(str(tmp_path / "model-symbol.json"), ["data"], str(tmp_path / "model-0000.params"))
    names = sorted(n for n, p in imported.collect_params().items() if getattr(p, "constraint", None))
    assert names == sorted(gc.constraints_config(net)["parameters"])
    conv = next(p for n, p in imported.collect_params().items() if "conv" in n and n.endswith("weight"))
    assert conv.constraint == gc.Compose([gc.NonNeg(), gc.MaxNorm(0.7, axis=(0, 2, 3))])
    for ours, theirs in zip(projected(net), projected(imported)):
        np.testing.assert_array_equal(ours, theirs)
    trainer = gc.ConstrainedTrainer(imported.collect_params(), "sgd", {"learning_rate": 1.0})
    with autograd.record():
        loss = -imported(mx.nd.ones((2, 4)) * 3).sum()
    loss.backward()
    with pytest.warns(gc.UnenforcedConstraintWarning):  # the original network is still alive
        trainer.step(2)
    w = conv.data().asnumpy()
    np.testing.assert_allclose(w, ref.max_norm(np.maximum(w, 0), 0.7, (0, 2, 3)), rtol=1e-5, atol=1e-7)


def test_a_grouped_transposed_convolution_cannot_come_back_without_its_layer(tmp_path):
    net = nn.HybridSequential()
    net.add(nn.Conv2DTranspose(4, 2, groups=2, in_channels=4, weight_constraint=gc.MaxNorm(1.0)))
    net.initialize()
    net.hybridize()
    net(mx.nd.ones((1, 4, 3, 3)))
    gc.export(net, str(tmp_path / "grouped"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MXNet's own note about unknown types
        with pytest.raises(ValueError, match=r"conv\d+_weight: its Conv2DTranspose reduces over a per-group view"):
            gc.imports(str(tmp_path / "grouped-symbol.json"), ["data"], str(tmp_path / "grouped-0000.params"))


def test_entries_that_match_nothing_or_another_layer_are_all_named_and_nothing_is_attached():
    config = gc.constraints_config(build())
    config["parameters"]["nowhere_weight"] = {"constraint": gc.serialize(gc.MaxNorm(1.0)), "path": "9.weight",
                                              "layer": "Dense"}
    other = gluon.nn.HybridSequential()
    other.add(gluon.nn.Conv2D(18, 1, in_channels=4), gluon.nn.HybridLambda(lambda F, x: x),
              gluon.nn.Conv2DTranspose(3, 2, in_channels=2), gluon.nn.Flatten(), gluon.nn.Dense(2, in_units=48))
    other.initialize()
    with pytest.raises(ValueError) as info:
        gc.constrain_from_config(other, config)
    message = str(info.value)
    assert "nowhere_weight: no parameter of that name or structural name '9.weight'" in message
    assert "saved for a Dense, found in a Conv2D" in message
    assert all(getattr(p, "constraint", None) is None for p in other.collect_params().values())


def test_imports_without_a_constraints_file_says_what_to_use(tmp_path):
    with pytest.raises(FileNotFoundError, match="No constraints file .*model-constraints.json.* use "
                                                "gluon.SymbolBlock.imports, then gc.constrain"):
        gc.imports(str(tmp_path / "model-symbol.json"), ["data"])


def test_a_config_of_another_kind_is_refused():
    with pytest.raises(ValueError, match="Expected a constraints config"):
        gc.constrain_from_config(build(), {"parameters": {}})


def test_loading_a_checkpoint_that_violates_the_constraints_warns_and_apply_fixes_it(tmp_path):
    plain = build(constrained=False)
    plain.save_parameters(str(tmp_path / "old.params"))  # Normal(1.0) rows: norms far above 0.5
    net = build()
    with pytest.warns(gc.InfeasibleWeightsWarning, match=r"These loaded weights violate their constraints: "
                                                         r"\S*dense\d+_weight \(projection would change it"):
        gc.load_parameters(net, str(tmp_path / "old.params"))
    gc.apply_constraints(net)
    net.save_parameters(str(tmp_path / "new.params"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gc.load_parameters(build(), str(tmp_path / "new.params"))
