"""Certified robustness from a Lipschitz bound (Tsuzuku, Sato and Sugiyama 2018).

If a classifier's scores ``f`` are ``L``-Lipschitz in L2, a change ``delta`` of the input moves the
difference of any two scores by at most ``sqrt(2) * L * ||delta||``; so the predicted class cannot
change while ``||delta|| < margin / (sqrt(2) * L)``, the margin being the top score minus the
runner-up. That radius is certified: no input inside it, found by any attack, is classified
differently.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union, cast

import numpy as np
from mxnet import autograd
from mxnet import ndarray as nd

from ..errors import CertificationError
from .lipschitz import lipschitz_bound

__all__ = ["certified_radius", "certified_accuracy"]


def certified_radius(net: Any, x: Any, bound: Optional[float] = None) -> np.ndarray:
    """Per example of batch ``x``, the L2 radius within which ``net``'s predicted class cannot
    change: ``margin / (sqrt(2) * bound)``.

    Parameters
    ----------
    net : Block
        A classifier returning one score per class (logits), run in inference mode.
    x : NDArray
        A batch of inputs.
    bound : float or None
        An upper bound on ``net``'s L2 Lipschitz constant; None: :func:`lipschitz_bound` on one
        example of ``x``'s shape.

    Returns
    -------
    numpy.ndarray of float64
        One radius per example (0 where two classes tie).

    Raises
    ------
    CertificationError
        If ``bound`` is not a positive finite number, or ``net`` returns fewer than two scores.
    """
    x = x if isinstance(x, nd.NDArray) else nd.array(x)
    if bound is None:
        bound = lipschitz_bound(net, (1, *x.shape[1:]), ctx=x.context).bound
    if isinstance(bound, bool) or not isinstance(bound, (int, float, np.floating)) or not 0 < bound < math.inf:
        raise CertificationError(f"bound must be a positive finite Lipschitz bound: got {bound!r}.")
    with autograd.pause(train_mode=False):
        scores = net(x).asnumpy().astype(np.float64)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise CertificationError(f"certified_radius needs one score per class and example (at least two "
                                 f"classes): the network returned shape {scores.shape}.")
    top = np.sort(scores, axis=1)
    return (top[:, -1] - top[:, -2]) / (math.sqrt(2.0) * float(bound))


def certified_accuracy(net: Any, data: Iterable[Any], epsilon: Union[float, Sequence[float]],
                       bound: Optional[float] = None) -> Union[float, Dict[float, float]]:
    """The fraction of examples ``net`` classifies correctly with a certified radius of at least
    ``epsilon``: correct for every input within L2 distance ``epsilon`` of the example.

    Parameters
    ----------
    net : Block
        The classifier.
    data : iterable of (x, y)
        Batches of inputs and integer labels (a ``DataLoader``, or a list of pairs).
    epsilon : float or sequence of float
        The radius, or several (then a dict ``{epsilon: accuracy}``).
    bound : float or None
        An upper bound on ``net``'s Lipschitz constant; None: computed once from the first batch.

    Raises
    ------
    CertificationError
        If ``data`` holds no example, or an ``epsilon`` is negative or not a number.
    """
    single = np.ndim(epsilon) == 0
    given: List[Any] = [epsilon] if single else list(cast(Sequence[float], epsilon))
    radii = [r.item() if isinstance(r, np.ndarray) else r for r in given]  # 0-d numpy arrays
    for r in radii:
        if isinstance(r, bool) or not isinstance(r, (int, float, np.floating)) or not 0 <= r < math.inf:
            raise CertificationError(f"epsilon must be finite numbers >= 0: got {epsilon!r}.")
    certified = np.zeros(len(radii))
    total = 0
    for x, y in data:
        x = x if isinstance(x, nd.NDArray) else nd.array(x)
        if bound is None:
            bound = lipschitz_bound(net, (1, *x.shape[1:]), ctx=x.context).bound
        radius = certified_radius(net, x, bound)
        labels = np.asarray(y.asnumpy() if isinstance(y, nd.NDArray) else y)
        if labels.size != len(radius) or (labels.ndim > 1 and labels.shape[1:] != (1,) * (labels.ndim - 1)):
            raise CertificationError(
                f"certified_accuracy needs one class index per example: got labels of shape {labels.shape} "
                f"for a batch of {len(radius)} (one-hot labels: pass their argmax).")
        with autograd.pause(train_mode=False):
            correct = net(x).asnumpy().argmax(axis=1) == labels.reshape(-1)
        certified += [(correct & (radius >= r)).sum() for r in radii]
        total += len(radius)
    if total == 0:
        raise CertificationError("certified_accuracy got no examples in data.")
    result = {float(r): float(c / total) for r, c in zip(radii, certified)}
    return result[float(radii[0])] if single else result
