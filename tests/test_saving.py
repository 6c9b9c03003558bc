"""Constraints kept with the model: config, export/imports, loading checkpoints (docs/layers.md,
"Saving and loading constraints with a model")."""

import json
import re
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import gluon_constraints as gc
import reference as ref
from gluon_constraints import nn
from gluon_constraints.gluon.attachment import reduction_of


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
    assert conv["kernel_axes"] == [2, 3]
    assert gc.deserialize(conv["constraint"]) == gc.Compose([gc.NonNeg(), gc.MaxNorm(0.7)])
    bias = next(e for n, e in entries.items() if n.endswith("bias"))
    assert bias["constraint"] == {"class_name": "NonNeg", "config": {}} and bias["axes"] == [0]


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
    assert conv.constraint == gc.Compose([gc.NonNeg(), gc.MaxNorm(0.7)])  # as saved, with its layout
    assert reduction_of(conv) == gc.Reduction((0, 2, 3), None, (2, 3))
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


# One instance of every registered family (test_every_registered_family_has_a_sample checks
# the registry), and Scheduled around a whole-matrix family too.
SAMPLES = {
    "Constraint": gc.Constraint(),
    "MaxNorm": gc.MaxNorm(0.5),
    "MinMaxNorm": gc.MinMaxNorm(0.2, 0.5, ord=1),
    "UnitNorm": gc.UnitNorm(),
    "NonNeg": gc.NonNeg(),
    "Clip": gc.Clip(-0.1, 0.2),
    "Simplex": gc.Simplex(),
    "L1Ball": gc.L1Ball(0.5),
    "SpectralNorm": gc.SpectralNorm(0.5),
    "Orthogonal": gc.Orthogonal(),
    "RadialConstraint": gc.RadialConstraint(),
    "OperatorNorm": gc.OperatorNorm(0.5, input_shape=7, padding=1),
    "Scheduled": gc.Scheduled(gc.MaxNorm(0.5), start=1.0, steps=3),
    "Scheduled-SpectralNorm": gc.Scheduled(gc.SpectralNorm(0.5), start=2.0, steps=3),
    "Compose": gc.Compose([gc.NonNeg(), gc.MaxNorm(0.5)]),
}
# Every layer type a constraint attaches to: the block, its constrained parameter, an input.
LAYERS = {
    "Dense": (lambda: gluon.nn.Dense(6, in_units=8), "weight", (2, 8)),
    "Conv1D": (lambda: gluon.nn.Conv1D(4, 3, in_channels=3), "weight", (1, 3, 7)),
    "Conv2D": (lambda: gluon.nn.Conv2D(4, 3, in_channels=3), "weight", (1, 3, 7, 7)),
    "Conv3D": (lambda: gluon.nn.Conv3D(4, 2, in_channels=2), "weight", (1, 2, 4, 4, 4)),
    "Conv2D-grouped": (lambda: gluon.nn.Conv2D(4, 3, in_channels=4, groups=2), "weight", (1, 4, 7, 7)),
    "Conv2D-NHWC": (lambda: gluon.nn.Conv2D(4, 3, in_channels=3, layout="NHWC"), "weight", (1, 7, 7, 3)),
    "Conv1DTranspose": (lambda: gluon.nn.Conv1DTranspose(4, 3, in_channels=3), "weight", (1, 3, 5)),
    "Conv2DTranspose": (lambda: gluon.nn.Conv2DTranspose(4, 3, in_channels=3), "weight", (1, 3, 5, 5)),
    "Conv2DTranspose-grouped": (lambda: gluon.nn.Conv2DTranspose(4, 3, in_channels=4, groups=2), "weight",
                                (1, 4, 5, 5)),
    "Conv2DTranspose-NHWC": (lambda: gluon.nn.Conv2DTranspose(4, 3, in_channels=3, layout="NHWC"), "weight",
                             (1, 5, 5, 3)),
    "Conv3DTranspose": (lambda: gluon.nn.Conv3DTranspose(3, 2, in_channels=2), "weight", (1, 2, 3, 3, 3)),
    "Embedding": (lambda: gluon.nn.Embedding(10, 6), "weight", None),
    "LSTM": (lambda: gluon.rnn.LSTM(4, input_size=3), "l0_i2h_weight", (5, 2, 3)),
    "BatchNorm": (lambda: gluon.nn.BatchNorm(in_channels=4), "gamma", (2, 4, 3, 3)),
}


def test_every_registered_family_has_a_sample():
    ours = {name for name, cls in gc.registered_constraints().items()
            if cls.__module__.startswith("gluon_constraints.")}
    assert ours <= {name.split("-")[0] for name in SAMPLES}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_every_family_projects_after_export_and_imports_as_on_the_saved_network(layer, tmp_path):
    # docs/layers.md, "Saving and loading constraints with a model": a network loaded with
    # gc.imports has no layers; each constrained parameter gets its layer's recorded layout, so
    # every family projects bit for bit as it did on the saved network.
    make, attribute, shape = LAYERS[layer]
    original = gluon.nn.HybridSequential()
    original.add(make())
    original.initialize(mx.init.Normal(2.0))
    original.hybridize()
    output = original(mx.nd.array([[1, 4, 9]]) if shape is None else mx.nd.ones(shape))  # builds the graph
    try:
        output.wait_to_read()
    except mx.base.MXNetError:  # MKL-DNN runs no channels-last convolution; export needs the graph only
        assert "NHWC" in layer
    block = original[0]
    param = getattr(block, attribute)
    values = param.data().copy()
    checked, refused = [], []
    for family, constraint in SAMPLES.items():
        try:
            gc.attach(param, constraint, layer=block)
        except gc.ConstraintShapeError:
            refused.append(family)
            continue
        prefix = str(tmp_path / family)
        gc.export(original, prefix)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MXNet's own note about unknown types
            imported = gc.imports(f"{prefix}-symbol.json", ["data"], f"{prefix}-0000.params")
        twin = imported.collect_params()[param.name]
        assert twin.constraint == constraint, family
        assert reduction_of(twin) == reduction_of(param), family
        for target in (param, twin):
            target.set_data(values)
        gc.apply_constraints(original)
        gc.apply_constraints(imported)
        assert twin.data().asnumpy().tobytes() == param.data().asnumpy().tobytes(), family
        checked.append(family)
    # RadialConstraint needs square 2-D kernels, OperatorNorm a matrix or a kernel
    assert set(refused) <= {"RadialConstraint"} | ({"OperatorNorm"} if layer == "BatchNorm" else set()), refused
    assert len(checked) + len(refused) == len(SAMPLES)


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
    with pytest.raises(gc.ConstraintConfigError, match="Expected a constraints config"):
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


@pytest.mark.parametrize("entry,shown", [
    ({"path": "0.weight", "layer": "Dense"}, r"\{'path': '0.weight', 'layer': 'Dense'\}"),
    ("max_norm", r"'max_norm'"),
    ({"constraint": "max_norm"}, r"\{'constraint': 'max_norm'\}"),
], ids=["no-constraint", "a-string", "constraint-not-serialized"])
def test_a_malformed_config_entry_is_named_with_the_accepted_form(entry, shown):
    net = build()
    config = gc.constraints_config(net)
    name = next(iter(config["parameters"]))
    config["parameters"][name] = entry
    expected = (r"not of the form \{'constraint': \{'class_name': \.\.\., "
                r"'config': \{\.\.\.\}\}.*\n  " + re.escape(name) + ": got " + shown)
    with pytest.raises(gc.ConstraintConfigError, match=expected):
        gc.constrain_from_config(build(constrained=False), config)


def test_a_config_entry_whose_constraint_cannot_be_built_is_named_and_nothing_is_attached():
    config = gc.constraints_config(build())
    name = sorted(config["parameters"])[0]
    config["parameters"][name]["constraint"] = {"class_name": "MaxNorn", "config": {}}
    plain = build(constrained=False)
    expected = (re.escape(name) + r": its constraint .*MaxNorn.* cannot be "
                r"built: Unknown constraint name 'MaxNorn'. Did you mean 'MaxNorm'")
    with pytest.raises(gc.ConstraintConfigError, match=expected):
        gc.constrain_from_config(plain, config)
    assert all(getattr(p, "constraint", None) is None for p in plain.collect_params().values())
