"""Names, configs and serialization of constraints (docs/constraints.md, "Names, configs and serialization")."""

import json

import mxnet as mx
import numpy as np
import pytest

import gluon_constraints as gc
import reference as ref

EXAMPLES = [
    gc.MaxNorm(3.0, axis=(1, 2)),
    gc.MaxNorm(),
    gc.MinMaxNorm(0.25, 2.0, 0.5, axis=-1),
    gc.UnitNorm(axis=0),
    gc.NonNeg(),
    gc.Compose([gc.NonNeg(), gc.MaxNorm(3.0, axis=(1,))]),
    gc.Compose([gc.Compose([gc.UnitNorm()]), gc.MinMaxNorm()]),
]


@pytest.mark.parametrize("constraint", EXAMPLES, ids=repr)
def test_config_round_trips_through_json(constraint):
    config = constraint.get_config()
    assert json.loads(json.dumps(config)) == config
    rebuilt = type(constraint).from_config(json.loads(json.dumps(config)))
    assert rebuilt == constraint
    assert rebuilt.get_config() == config


@pytest.mark.parametrize("constraint", EXAMPLES, ids=repr)
def test_serialize_and_deserialize_invert_each_other(constraint):
    data = gc.serialize(constraint)
    assert data["class_name"] == type(constraint).__name__
    assert gc.deserialize(json.loads(json.dumps(data))) == constraint


@pytest.mark.parametrize("constraint", EXAMPLES, ids=repr)
def test_rebuilt_constraint_computes_the_same(constraint):
    w = mx.nd.array(np.random.default_rng(3).normal(size=(4, 3, 5)))
    rebuilt = gc.deserialize(gc.serialize(constraint))
    assert rebuilt(w).asnumpy().tobytes() == constraint(w).asnumpy().tobytes()


def test_get_config_mirrors_init_arguments():
    assert gc.MaxNorm(3, axis=(1, 2)).get_config() == {"max_value": 3.0, "axis": [1, 2], "ord": 2}
    assert gc.MaxNorm(3, ord=float("inf")).get_config() == {"max_value": 3.0, "axis": None, "ord": "inf"}
    assert gc.MinMaxNorm(0.5, 2, 0.25, axis=1, ord=1).get_config() == {
        "min_value": 0.5, "max_value": 2.0, "rate": 0.25, "axis": 1, "ord": 1}
    assert gc.UnitNorm().get_config() == {"axis": None, "ord": 2}
    assert gc.Clip(-1, None).get_config() == {"min_value": -1.0, "max_value": None}
    assert gc.Simplex(2).get_config() == {"radius": 2.0}
    assert gc.L1Ball().get_config() == {"radius": 1.0}
    assert gc.NonNeg().get_config() == {}
    assert gc.serialize(gc.Compose(["non_neg", gc.MaxNorm(1)])) == {
        "class_name": "Compose",
        "config": {"constraints": [{"class_name": "NonNeg", "config": {}},
                                   {"class_name": "MaxNorm", "config": {"max_value": 1.0, "axis": None, "ord": 2}}]}}


@pytest.mark.parametrize("name,cls", [
    ("MaxNorm", gc.MaxNorm), ("max_norm", gc.MaxNorm), ("MinMaxNorm", gc.MinMaxNorm),
    ("min_max_norm", gc.MinMaxNorm), ("UnitNorm", gc.UnitNorm), ("unit_norm", gc.UnitNorm),
    ("NonNeg", gc.NonNeg), ("non_neg", gc.NonNeg),
])
def test_get_builds_named_constraints_with_defaults(name, cls):
    built = gc.get(name)
    assert type(built) is cls
    assert built == cls()


def test_get_passes_constraints_and_none_through():
    c = gc.MaxNorm(4.0)
    assert gc.get(c) is c
    assert gc.get(None) is None


def test_get_accepts_serialized_dicts_and_lists():
    assert gc.get({"class_name": "max_norm", "config": {"max_value": 3}}) == gc.MaxNorm(3.0)
    composed = gc.get(["non_neg", gc.MaxNorm(2.0)])
    assert composed == gc.Compose([gc.NonNeg(), gc.MaxNorm(2.0)])
    assert gc.get(("unit_norm",)) == gc.Compose([gc.UnitNorm()])


def test_unknown_name_lists_known_names_and_suggests_closest():
    with pytest.raises(ValueError) as info:
        gc.get("maxnorm")
    message = str(info.value)
    assert message.startswith("Unknown constraint name 'maxnorm'. Did you mean 'max_norm'? Known names: ")
    for name in ("MaxNorm", "max_norm", "MinMaxNorm", "min_max_norm", "UnitNorm", "unit_norm",
                 "NonNeg", "non_neg", "Compose"):
        assert name in message
    assert isinstance(info.value, gc.UnknownConstraintError)


def test_unknown_class_name_in_dict_raises():
    with pytest.raises(gc.UnknownConstraintError, match="Unknown constraint name 'Radial'"):
        gc.deserialize({"class_name": "Radial", "config": {}})


@pytest.mark.parametrize("value", [3.0, object(), np.ones(3), int], ids=["float", "object", "array", "class"])
def test_get_rejects_non_constraints_with_type_error(value):
    with pytest.raises(TypeError, match="Expected a constraint .* got .* of type"):
        gc.get(value)


def test_deserialize_rejects_malformed_input():
    with pytest.raises(gc.ConstraintTypeError, match=r"deserialize expects a dict with a 'class_name' string, as "
                                                     r"gc.serialize writes .*: got 'MaxNorm'"):
        gc.deserialize("MaxNorm")


def test_serialize_rejects_non_constraints():
    with pytest.raises(TypeError, match="serialize expects a Constraint: got 3"):
        gc.serialize(3)


@gc.register_constraint
class SymmetricClip(gc.Constraint):
    """Elementwise clip to [-limit, limit]: a custom constraint for the registry tests."""

    def __init__(self, limit=1.0):
        self.limit = float(limit)

    def project(self, w, reduction, boundary_rtol):
        return mx.nd.clip(w, -self.limit, self.limit)

    def get_config(self):
        return {"limit": self.limit}


def test_registered_custom_constraint_round_trips():
    assert type(gc.get("SymmetricClip")) is SymmetricClip
    assert type(gc.get("symmetric_clip")) is SymmetricClip
    c = SymmetricClip(0.5)
    assert gc.deserialize(gc.serialize(c)) == c
    composed = gc.deserialize(gc.serialize(gc.Compose([c, gc.NonNeg()])))
    out = composed(mx.nd.array([[-2.0, 0.25, 3.0]])).asnumpy()
    np.testing.assert_array_equal(out, [[0.0, 0.25, 0.5]])


def test_register_rejects_non_constraint_classes():
    with pytest.raises(TypeError, match="register_constraint expects a subclass of gluon_constraints.Constraint"):
        gc.register_constraint(dict)


def test_register_refuses_a_taken_name():
    class MaxNorm(gc.Constraint):  # noqa: D401 - a deliberate name clash
        pass

    with pytest.raises(ValueError, match="Constraint name 'MaxNorm' is already registered"):
        gc.register_constraint(MaxNorm)
    assert gc.get("max_norm").__class__ is gc.MaxNorm


def test_get_builds_a_constraint_class_with_its_defaults():
    assert gc.get(gc.MaxNorm) == gc.MaxNorm(2.0)
    assert gc.get(gc.MinMaxNorm) == gc.MinMaxNorm(0.0, 1.0, 1.0)


def test_snake_case_module_aliases_are_the_classes():
    assert (gc.max_norm, gc.min_max_norm, gc.unit_norm, gc.non_neg) == \
        (gc.MaxNorm, gc.MinMaxNorm, gc.UnitNorm, gc.NonNeg)
    assert gc.max_norm(3.0) == gc.MaxNorm(3.0)


def halve(w):
    return w * 0.5


def test_get_wraps_a_plain_function_which_runs_on_the_whole_weight_and_cannot_be_serialized():
    constraint = gc.get(halve)
    assert isinstance(constraint, gc.Function) and constraint == gc.Function(halve)
    w = mx.nd.array([[3.0, 4.0], [1.0, -2.0]])
    np.testing.assert_array_equal(constraint(w).asnumpy(), w.asnumpy() * 0.5)
    assert repr(constraint) == "Function(halve)"
    with pytest.raises(TypeError, match="Function\\(halve\\) wraps a Python function, which cannot be serialized"):
        gc.serialize(constraint)
    composed = gc.get([halve, gc.MaxNorm(1.0)])
    np.testing.assert_allclose(composed(w).asnumpy(), ref.max_norm(w.asnumpy() * 0.5, 1.0, (1,)), rtol=1e-6)


def test_a_function_returning_another_shape_is_an_error_naming_it():
    with pytest.raises(gc.ConstraintShapeError, match="returned shape \\(2,\\) for a weight of shape \\(2, 2\\)"):
        gc.get(lambda w: w[0])(mx.nd.ones((2, 2)))


class PeakNormalizedOldForm(gc.Constraint):
    """Each slice divided by its largest magnitude, written for 0.1's project(w, axes, ...) on
    the viewed weight."""

    def project(self, w, axes, boundary_rtol):
        return mx.nd.broadcast_div(w, mx.nd.max(mx.nd.abs(w), axis=axes, keepdims=True))


def test_a_family_written_for_the_first_contract_still_projects_its_views():
    # docs/constraints.md, "Writing a constraint": project(w, axes, boundary_rtol) receives the
    # weight viewed with the reduction's view and its axes, as in 0.1.
    w = np.random.default_rng(2).normal(size=(4, 6, 2)).astype(np.float32)
    grouped = gc.Reduction((1, 3), view_shape=(2, 2, 6, 2))  # per (group, last index), over rows and columns
    out = PeakNormalizedOldForm()(mx.nd.array(w), grouped).asnumpy()
    view = w.reshape(2, 2, 6, 2)
    expected = (view / np.abs(view).max(axis=(1, 3), keepdims=True)).reshape(w.shape)
    np.testing.assert_allclose(out, expected, rtol=1e-7)
