"""Host copies wait for the operators still reading an array (docs/architecture.md): an
inference-mode MKL-DNN convolution reorders its weight while it reads it, so a copy that waits
only for writers (MXNet's ``asnumpy``) can race with it.

A custom operator that reads its input slowly stands in for that convolution: the test sees
whether the copy returned before or after the reader finished.
"""

import time

import mxnet as mx
import numpy as np

import gluon_constraints as gc
from gluon_constraints.catalogue.host import host_copy

READ_SECONDS = 1.0
FINISHED = []


class SlowReader(mx.operator.CustomOp):
    def forward(self, is_train, req, in_data, out_data, aux):
        time.sleep(READ_SECONDS)
        FINISHED.append(time.perf_counter())
        self.assign(out_data[0], req[0], in_data[0])


@mx.operator.register("gc_test_slow_reader")
class SlowReaderProp(mx.operator.CustomOpProp):
    def __init__(self):
        super().__init__(need_top_grad=False)

    def infer_shape(self, in_shape):
        return in_shape, in_shape, []

    def create_operator(self, ctx, shapes, dtypes):
        return SlowReader()


def copy_while_read(copy):
    array = mx.nd.array(np.arange(6.0).reshape(2, 3))
    array.wait_to_read()
    FINISHED.clear()
    reader = mx.nd.Custom(array, op_type="gc_test_slow_reader")
    values = copy(array)
    returned = time.perf_counter()
    reader.wait_to_read()
    return values, returned


def test_host_copy_returns_after_the_operators_reading_the_array():
    values, returned = copy_while_read(host_copy)
    assert FINISHED and FINISHED[0] <= returned
    np.testing.assert_array_equal(values, np.arange(6.0).reshape(2, 3))


def test_asnumpy_alone_does_not_wait_for_readers():
    # why host_copy exists: MXNet's own copy returns while the reader is still running
    _, returned = copy_while_read(lambda a: a.asnumpy())
    assert FINISHED and returned < FINISHED[0]


def test_lipschitz_bound_reads_weights_after_an_inference_forward_has_reordered_them():
    net = gc.nn.HybridSequential()
    net.add(gc.nn.Conv2D(8, 3, padding=1, in_channels=3), gc.nn.Activation("relu"),
            gc.nn.Conv2D(8, 3, padding=1, in_channels=8))
    net.initialize(mx.init.Normal(1.0))
    x = mx.nd.ones((1, 3, 6, 6))
    first = gc.lipschitz_bound(net, x.shape).bound
    for _ in range(5):
        net(x)  # inference mode: MKL-DNN may reorder the weights while the bound reads them
        assert gc.lipschitz_bound(net, x.shape).bound == first
