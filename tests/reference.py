"""Independent float64 numpy reference formulas for the constraint catalogue.

Written from docs/constraints.md and Keras 3's source, not imported from the package, so a bug in the
package's arithmetic cannot hide in its own reference.
"""

import numpy as np

KERAS_EPSILON = 1e-7


def norms(w, axes):
    """L2 norm of each slice over ``axes`` (float64, keepdims)."""
    w = np.asarray(w, dtype=np.float64)
    if axes == ():
        return np.abs(w)
    return np.sqrt(np.sum(w * w, axis=axes, keepdims=True))


def max_norm(w, max_value, axes):
    w = np.asarray(w, dtype=np.float64)
    return w * max_value / np.maximum(norms(w, axes), max_value)


def min_max_norm(w, min_value, max_value, rate, axes):
    w = np.asarray(w, dtype=np.float64)
    n = norms(w, axes)
    desired = rate * np.clip(n, min_value, max_value) + (1 - rate) * n
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, w * desired / n, w)


def unit_norm(w, axes):
    w = np.asarray(w, dtype=np.float64)
    n = norms(w, axes)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, w / n, w)


def non_neg(w):
    w = np.asarray(w, dtype=np.float64)
    return w * (w >= 0)


# Keras 3 (keras/src/constraints/constraints.py), transliterated to numpy.
def keras_max_norm(w, max_value, axis):
    n = norms(w, axis)
    return np.asarray(w, np.float64) * (np.clip(n, 0, max_value) / (KERAS_EPSILON + n))


def keras_min_max_norm(w, min_value, max_value, rate, axis):
    n = norms(w, axis)
    desired = rate * np.clip(n, min_value, max_value) + (1 - rate) * n
    return np.asarray(w, np.float64) * (desired / (KERAS_EPSILON + n))


def keras_unit_norm(w, axis):
    return np.asarray(w, np.float64) / (KERAS_EPSILON + norms(w, axis))


def keras_non_neg(w):
    return np.maximum(np.asarray(w, np.float64), 0)


def per_output_unit_axes(ndim):
    """docs/constraints.md, "Axes": every axis but 0, or axis 0 of a 1-D array."""
    return (0,) if ndim == 1 else tuple(range(1, ndim))
