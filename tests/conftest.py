import gc as garbage_collector
import os

import mxnet as mx
import numpy as np
import pytest
from hypothesis import settings

# MXNet's first call of an operator is slow; hypothesis deadlines would measure that.
settings.register_profile("gluon", deadline=None, max_examples=150, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gluon"))


@pytest.fixture
def numpy_mode():
    """Run a test with MXNet's numpy semantics on, and switch them off afterwards."""
    mx.npx.set_np()
    try:
        yield
    finally:
        mx.npx.reset_np()


@pytest.fixture
def rng():
    return np.random.default_rng(20141)


@pytest.fixture(autouse=True)
def collect_dead_networks():
    """Free earlier tests' networks, so trainers do not warn about their constrained parameters."""
    garbage_collector.collect()
    yield
