"""Copies of arrays to the host that wait for the operators still reading them."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["host_copy"]


def host_copy(array: Any) -> np.ndarray:
    """``array.asnumpy()`` once every queued operator that reads ``array`` has run.

    MXNet's copy to the host waits only for the array's writers, then checks its layout and
    copies. An inference-mode MKL-DNN convolution (or fully connected layer) still running on a
    weight reorders it into a blocked layout while reading it, so the copy can see the plain
    layout, then find blocked memory and fail ("We can't generate TBlob for MKLDNN data"), or
    read memory being rewritten. ``MXNDArrayWaitToWrite`` (not in the Python API) waits for
    readers too.
    """
    from mxnet.base import _LIB, check_call

    check_call(_LIB.MXNDArrayWaitToWrite(array.handle))
    return array.asnumpy()
