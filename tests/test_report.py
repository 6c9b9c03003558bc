"""gc.report, its Markdown and JSON, gc.export's report file and ``python -m gluon_constraints
report`` (docs/certification.md, "A constraint report for model cards"), against numpy."""

import json
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import gluon_constraints as gc
from gluon_constraints import nn

import reference as ref


def network():
    net = nn.HybridSequential()
    net.add(nn.Conv2D(4, 3, in_channels=2, weight_constraint=gc.MaxNorm(1.5)),
            nn.Flatten(),
            nn.Dense(5, in_units=64, weight_constraint=gc.UnitNorm(), bias_constraint=gc.NonNeg()),
            nn.Dense(3, in_units=5))
    net.initialize(mx.init.Normal(1.0))
    conv, dense = net[0].weight, net[2].weight
    conv.set_data(ref.max_norm(conv.data().asnumpy(), 1.5, (1, 2, 3)))   # feasible: filters at most 1.5
    rows = dense.data().asnumpy()
    rows[0] *= 3.0                                                      # row 0 off the unit sphere
    dense.set_data(ref.unit_norm(rows, (1,)) * np.array([[3.0]] + [[1.0]] * 4))
    return net


def test_the_report_numbers_are_numpys():
    net = network()
    result = gc.report(net)
    assert sorted(result["parameters"]) == sorted([net[0].weight.name, net[2].weight.name, net[2].bias.name])

    conv = net[0].weight.data().asnumpy().astype(np.float64)
    norms = np.sqrt((conv ** 2).sum(axis=(1, 2, 3)))
    fields = result["parameters"][net[0].weight.name]
    assert fields["constraint"] == gc.serialize(gc.MaxNorm(1.5)) and fields["bound"] == 1.5
    assert fields["units"] == 4
    assert fields["max_norm"] == pytest.approx(norms.max(), rel=1e-12)
    assert fields["mean_norm"] == pytest.approx(norms.mean(), rel=1e-12)
    assert fields["at_bound"] == np.mean(norms >= 1.5 * (1 - 1e-3))
    assert fields["violation"] == 0.0

    dense = net[2].weight.data().asnumpy().astype(np.float64)
    fields = result["parameters"][net[2].weight.name]
    assert fields["bound"] is None and fields["at_bound"] is None            # UnitNorm has no max_value
    assert fields["max_norm"] == pytest.approx(3.0, rel=1e-6)
    expected = np.abs(ref.unit_norm(dense, (1,)) - dense).max() / np.abs(dense).max()
    assert fields["violation"] == pytest.approx(expected, rel=1e-5)


def test_markdown_and_json_carry_the_same_report():
    net = network()
    result = gc.report(net, input_shape=(1, 2, 6, 6))
    assert json.loads(result.json()) == result
    text = result.markdown()
    for name in result["parameters"]:
        assert f"| `{name}` |" in text
    assert "`MaxNorm(max_value=1.5, axis=None, ord=2)`" in text
    bound = gc.lipschitz_bound(net, (1, 2, 6, 6)).bound
    assert result["lipschitz_bound"] == bound and f"{bound:.4g}" in text


def test_a_network_it_cannot_certify_is_reported_with_the_reason():
    net = nn.HybridSequential()
    net.add(nn.Embedding(10, 4, weight_constraint=gc.MaxNorm(1.0)))
    net.initialize()
    result = gc.report(net, input_shape=(1, 3))
    assert result["lipschitz_bound"] is None
    assert "not certified" in result["lipschitz_note"] and "Embedding" in result["lipschitz_note"]


def test_export_writes_the_report_and_the_command_prints_it(tmp_path):
    net = network()
    net.hybridize()
    net(mx.nd.ones((1, 2, 6, 6)))
    prefix = str(tmp_path / "model")
    gc.export(net, prefix)
    written = (tmp_path / "model-constraints.md").read_text()
    assert written == gc.report(net).markdown()

    command = [sys.executable, "-m", "gluon_constraints", "report", f"{prefix}-symbol.json", f"{prefix}-0000.params"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == written
    out = subprocess.run(command + ["--json"], capture_output=True, text=True, timeout=120)
    assert json.loads(out.stdout)["parameters"] == json.loads(gc.report(net).json())["parameters"]


def test_the_command_says_why_it_cannot_load_a_model(tmp_path):
    out = subprocess.run([sys.executable, "-m", "gluon_constraints", "report", str(tmp_path / "none-symbol.json"),
                          str(tmp_path / "none-0000.params")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "cannot load the model" in out.stderr and "none-constraints.json" in out.stderr


def test_whole_matrix_families_have_no_unit_bound_and_nan_weights_give_strict_json():
    net = nn.HybridSequential()
    net.add(nn.Dense(3, in_units=4, weight_constraint=gc.SpectralNorm(0.5)),
            nn.Dense(2, in_units=3, weight_constraint=gc.MaxNorm(1.0)))
    net.initialize()
    net[1].weight.set_data(mx.nd.array(np.full((2, 3), np.nan)))
    result = gc.report(net)
    assert result["parameters"][net[0].weight.name]["at_bound"] is None
    parsed = json.loads(result.json(), parse_constant=lambda name: pytest.fail(f"non-standard JSON {name}"))
    assert parsed["parameters"][net[1].weight.name]["max_norm"] is None
