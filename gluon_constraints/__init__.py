"""Keras-style weight constraints for Apache MXNet Gluon: max-norm and friends, per output unit.

After every update each constrained weight is projected back into its set (max-norm as in the
Dropout paper: every unit's incoming weights keep an L2 norm <= c), on whichever copy the
update wrote: device copies, the kvstore's copy, parameter servers' copies, fp32 master copies.
Example::

    import gluon_constraints as gc
    from gluon_constraints import nn                      # a drop-in for mxnet.gluon.nn
    net = nn.Dense(64, in_units=32, weight_constraint=gc.MaxNorm(3.0))
    net.initialize()
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1})

The documentation is in the repository's docs/ (index.md first; architecture.md for the layers
of this package). Importing the package needs only ``mxnet.ndarray``: parameter-server
processes import it while ``import mxnet`` is still running, before ``mxnet.nd`` and
``mxnet.gluon`` exist, so names that need Gluon (attaching, layers, enforcement) load on first
use.
"""

import importlib
from typing import TYPE_CHECKING, Any, List

from . import _mxnet_compat  # checks the installed MXNet version at import
from . import _moved  # lets files that name 0.1.0's module paths load
from .catalogue import (FAMILIES, Constraint, Function, Reduction, deserialize, get, register_constraint,
                        registered_constraints, serialize)
from .catalogue.spectrum import conv_operator_norm
from .errors import *  # noqa: F403 - every exception and warning is public (errors.__all__)
from .errors import __all__ as _ERRORS

# Every family of the catalogue (each registers itself where it is defined) and Keras's aliases.
globals().update(FAMILIES)

if TYPE_CHECKING:  # what FAMILIES and __getattr__ provide at run time, for type checkers
    # (tests/test_lint.py keeps these names equal to __all__'s).
    from . import nn, rnn
    from .catalogue.box import Clip
    from .catalogue.compose import Compose
    from .catalogue.elementwise import NonNeg
    from .catalogue.elementwise import NonNeg as non_neg
    from .catalogue.norms import MaxNorm, MinMaxNorm, UnitNorm
    from .catalogue.norms import MaxNorm as max_norm
    from .catalogue.norms import MinMaxNorm as min_max_norm
    from .catalogue.norms import UnitNorm as unit_norm
    from .catalogue.operator_norm import OperatorNorm
    from .catalogue.orthogonal import Orthogonal
    from .catalogue.radial import RadialConstraint
    from .catalogue.radial import RadialConstraint as radial_constraint
    from .catalogue.schedule import Scheduled
    from .catalogue.simplex import L1Ball, Simplex
    from .catalogue.spectral import SpectralNorm
    from .certify.lipschitz import lipschitz_bound, register_lipschitz
    from .certify.report import ConstraintReport, export, report
    from .certify.robustness import certified_accuracy, certified_radius
    from .gluon.attachment import attach, constrain
    from .gluon.keras import from_keras, from_keras_layer
    from .gluon.layouts import register_layout
    from .gluon.saving import constrain_from_config, constraints_config, imports, load_parameters
    from .training.apply import apply_constraints
    from .training.averaging import WeightAverage
    from .training.estimator import ConstraintHandler
    from .training.monitoring import CSVWriter, TensorBoardWriter
    from .training.optimizer import ConstrainedOptimizer
    from .training.penalty import penalty
    from .training.trainer import ConstrainedTrainer, enforce
    from .training.verify import verify_constraints

# Public names defined in modules that import mxnet.gluon, loaded lazily (PEP 562).
_LAZY = {
    "attach": "gluon.attachment",
    "constrain": "gluon.attachment",
    "register_layout": "gluon.layouts",
    "apply_constraints": "training.apply",
    "ConstrainedTrainer": "training.trainer",
    "enforce": "training.trainer",
    "verify_constraints": "training.verify",
    "penalty": "training.penalty",
    "WeightAverage": "training.averaging",
    "CSVWriter": "training.monitoring",
    "TensorBoardWriter": "training.monitoring",
    "ConstrainedOptimizer": "training.optimizer",
    "ConstraintHandler": "training.estimator",
    "constraints_config": "gluon.saving",
    "constrain_from_config": "gluon.saving",
    "export": "certify.report",
    "imports": "gluon.saving",
    "load_parameters": "gluon.saving",
    "from_keras": "gluon.keras",
    "from_keras_layer": "gluon.keras",
    "lipschitz_bound": "certify.lipschitz",
    "register_lipschitz": "certify.lipschitz",
    "certified_radius": "certify.robustness",
    "certified_accuracy": "certify.robustness",
    "report": "certify.report",
    "ConstraintReport": "certify.report",
    "nn": None,
    "rnn": None,
}

__all__ = [
    "Constraint",
    *FAMILIES,
    "Function",
    "Reduction",
    "get",
    "serialize",
    "deserialize",
    "register_constraint",
    "registered_constraints",
    "conv_operator_norm",
    *_LAZY,
    *_ERRORS,
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'gluon_constraints' has no attribute '{name}'")
    module_name = _LAZY[name]
    if module_name is None:
        return importlib.import_module(f".{name}", __name__)
    return getattr(importlib.import_module(f".{module_name}", __name__), name)


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
