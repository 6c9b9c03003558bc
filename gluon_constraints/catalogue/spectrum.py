"""Operator norms of convolutions, exactly (Sedghi, Gupta and Long 2019), and of matrices.

A convolution with circular padding on inputs of spatial size ``n`` is block-circulant: its
singular values are those of the ``(out, in)`` transfer matrices

    P(f) = sum_x K[:, :, x] exp(-2 pi i <f, x / n>),   f in {0, ..., n - 1}^d

one per frequency ``f`` of the d-dimensional discrete Fourier transform, so its operator norm
(largest singular value) is ``max_f sigma_max(P(f))``. With zero padding ``p`` the convolution is
the circular one on the padded size ``n + 2p`` restricted to its valid outputs, and with a
stride it is followed by a subsampling: the circular norm on ``n + 2p`` is an upper bound there,
and the stride is computed exactly by the polyphase decomposition. A dilated kernel is the
kernel with zeros between its taps. With ``groups`` the operator is block-diagonal, one block per
group. A transposed convolution is the adjoint of a convolution with the same kernel, and has
its singular values.

``sigma_max(P(f))^2`` is the largest eigenvalue of the Gram matrix ``G(f) = P(f)^* P(f)`` (of the
smaller side), itself a trigonometric polynomial with one coefficient per tap offset ``d``:
``G(f) = sum_d C_d exp(-2 pi i <f, d / n>)``, ``C_d = sum_{y - x = d} K_x^T K_y``. For small kernels
on large inputs the ``C_d`` cost far fewer operations than one Gram matrix per frequency, and
are used then. Every product is of contiguous arrays (numpy hands only those to BLAS; others
take its loop, a hundred times slower). Everything is computed in float64 with numpy (a host round trip); the results
are rounded up by :data:`ROUND_UP`, far above the computations' errors, so they are upper bounds.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConstraintArgumentError

__all__ = ["conv_operator_norm", "dense_operator_norm", "largest_singular_value", "ROUND_UP", "tap_positions",
           "on_grid"]

#: The relative amount by which computed operator norms are rounded up, far above the float64
#: errors of the Gram matrices and of LAPACK (about ``n * 1e-16``), so that they are upper bounds.
ROUND_UP = 1e-9

#: How far above the leading Gram matrices' largest eigenvalue the Cholesky test of the others is
#: made: the computed norms are exact to this relative amount (half of it, for singular values).
CANDIDATE_MARGIN = 1e-7

#: The share of the Gram matrices (at least 4) that power iterations rank highest and that get
#: an exact eigenvalue; the others are certified below the largest of those by Cholesky.
LEADERS = 1 / 8


def dense_operator_norm(weight: np.ndarray) -> float:
    """The largest singular value of a matrix (a Dense weight ``(units, in_units)``), rounded up
    by :data:`ROUND_UP`."""
    matrix = np.asarray(weight, dtype=np.float64).reshape(weight.shape[0], -1)
    if matrix.shape[0] < matrix.shape[1]:
        matrix = matrix.T
    return math.sqrt(_largest_eigenvalue_bound((matrix.T @ matrix)[None])) * (1.0 + ROUND_UP)


def conv_operator_norm(kernel: np.ndarray, size: Sequence[int], dilation: Optional[Sequence[int]] = None,
                       groups: int = 1, stride: Optional[Sequence[int]] = None) -> float:
    """The operator norm of a circular convolution on inputs of spatial ``size``, rounded up by
    :data:`ROUND_UP` (an upper bound for zero padding: see the module's notes).

    A stride ``s`` is computed exactly, by the polyphase decomposition: the strided convolution
    on ``size`` (a multiple of ``s``, else rounded up to one, which only pads zeros) is a
    stride-1 convolution on ``size / s`` whose input channels are the ``prod(s)`` phases of the
    input, with the kernel's taps ``s * x + r`` for phase ``r``.

    Parameters
    ----------
    kernel : array of shape (A, B, k_1, ..., k_d)
        The weight in channels-first layout: a convolution's ``(out, in / groups, ...)`` or a
        transposed convolution's ``(in, out / groups, ...)``.
    size : sequence of d ints
        The (padded) spatial size of the input: ``n + 2 * padding`` per axis.
    dilation, stride : sequence of d ints or None
        The layer's dilation and stride (None: 1).
    groups : int
        The layer's groups: axis 0 holds ``groups`` blocks.

    Raises
    ------
    ConstraintArgumentError
        Naming the argument: a kernel that is not a real, finite array of at least 3 dimensions
        (an NDArray is read to the host), sizes, dilations or strides that are not one int >= 1
        per spatial axis, or groups that do not divide axis 0.

    Examples
    --------
    >>> round(gc.conv_operator_norm([[[0.0, 2.0, 0.0]]], (8,)), 6)     # 2 x the identity
    2.0
    >>> round(gc.conv_operator_norm([[[1.0, 1.0]]], (8,)), 6)          # x[i] + x[i + 1]: 2 at f = 0
    2.0
    """
    kernel, size, dilation, stride = _checked(kernel, size, dilation, groups, stride)
    dilated = on_grid(kernel, tuple((k - 1) * d + 1 for k, d in zip(kernel.shape[2:], dilation)), dilation)
    phases, size = _polyphase(dilated, tuple(size), stride)
    return math.sqrt(_largest_eigenvalue_bound(_gram_matrices(phases, size, groups))) * (1.0 + ROUND_UP)


def _checked(kernel: Any, size: Any, dilation: Any, groups: Any,
             stride: Any) -> Tuple[np.ndarray, Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]:
    """:func:`conv_operator_norm`'s arguments as float64 and tuples, or a ConstraintArgumentError
    naming the one that is wrong."""
    values = kernel.asnumpy() if hasattr(kernel, "asnumpy") else kernel
    try:
        array = np.asarray(values)
    except (TypeError, ValueError):
        array = np.asarray([], dtype=object)
    if array.ndim < 3 or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ConstraintArgumentError(
            f"conv_operator_norm kernel must be a real array of shape (A, B, k_1, ..., k_d): got "
            f"{type(kernel).__name__} of shape {getattr(array, 'shape', None)} and dtype {array.dtype}.")
    if not np.isfinite(array).all():
        raise ConstraintArgumentError("conv_operator_norm kernel holds NaN or infinite entries.")
    spatial = array.ndim - 2

    def ints(name: str, given: Any, default: Optional[int]) -> Tuple[int, ...]:
        found: Tuple[Any, ...] = (default,) * spatial if given is None else given
        try:
            found = tuple(found)
        except TypeError:
            found = ()
        if len(found) != spatial or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                            and v >= 1 for v in found):
            raise ConstraintArgumentError(
                f"conv_operator_norm {name} must be {spatial} ints >= 1 (one per spatial axis of the kernel "
                f"of shape {array.shape}): got {given!r}.")
        return tuple(int(v) for v in found)

    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1 or array.shape[0] % groups:
        raise ConstraintArgumentError(
            f"conv_operator_norm groups must be an int >= 1 that divides axis 0 of the kernel of shape "
            f"{array.shape}: got {groups!r}.")
    return (array.astype(np.float64), ints("size", size, None), ints("dilation", dilation, 1),
            ints("stride", stride, 1))


def largest_singular_value(matrices: np.ndarray) -> float:
    """The largest singular value in a batch of complex matrices ``(..., m, n)``, certified as
    :func:`conv_operator_norm`'s (never below, at most ``CANDIDATE_MARGIN / 2`` above)."""
    matrices = np.ascontiguousarray(matrices.reshape(-1, *matrices.shape[-2:]))
    if matrices.shape[-2] < matrices.shape[-1]:
        matrices = np.ascontiguousarray(np.swapaxes(matrices, -1, -2))
    adjoint = np.ascontiguousarray(np.conj(np.swapaxes(matrices, -1, -2)))
    return math.sqrt(_largest_eigenvalue_bound(adjoint @ matrices))


def tap_positions(kernel_shape: Sequence[int], size: Sequence[int], dilation: Sequence[int]) -> np.ndarray:
    """For each tap ``x`` of a kernel (in ``np.ndindex`` order), its flat position ``x * dilation``
    on the circular grid of ``size`` (wrapped around where the dilated kernel is larger)."""
    taps = np.array(list(itertools.product(*(range(k) for k in kernel_shape))), dtype=np.int64)
    wrapped = (taps * np.asarray(dilation, dtype=np.int64)) % np.asarray(size, dtype=np.int64)
    return np.ravel_multi_index(tuple(wrapped.T), tuple(size))


def on_grid(kernel: np.ndarray, size: Tuple[int, ...], dilation: Tuple[int, ...]) -> np.ndarray:
    """``kernel`` placed on the circular grid of ``size``, taps ``dilation`` apart (summed where
    they wrap onto each other)."""
    a, b = kernel.shape[:2]
    grid = np.zeros((a, b, int(np.prod(size))), dtype=kernel.dtype)
    positions = tap_positions(kernel.shape[2:], size, dilation)
    taps = kernel.reshape(a, b, -1)
    if len(np.unique(positions)) == len(positions):
        grid[:, :, positions] = taps
    else:  # taps that wrap onto one position add up
        for tap, position in enumerate(positions):
            grid[:, :, position] += taps[:, :, tap]
    return grid.reshape(a, b, *size)


# -- Gram matrices per frequency --------------------------------------------------------------------
def _gram_matrices(kernel: np.ndarray, size: Tuple[int, ...], groups: int) -> np.ndarray:
    """The Gram matrices (of the smaller side) of the transfer matrices ``P(f)`` of each group of
    ``kernel`` on the circular grid of ``size``, over half the spectrum (``P(-f)`` is the conjugate
    of ``P(f)`` and has its singular values): shape ``(groups * frequencies, m, m)``."""
    a, b = kernel.shape[:2]
    blocks = kernel.reshape(groups, a // groups, b, -1)              # (g, rows, cols, taps)
    if blocks.shape[1] < blocks.shape[2]:  # P(f)^T has P(f)'s singular values
        blocks = blocks.transpose(0, 2, 1, 3)
    taps = blocks.shape[-1]
    frequencies = _half_spectrum(size)
    rows, cols = blocks.shape[1:3]
    if taps * taps <= 4 * len(frequencies):  # the coefficients C_d cost fewer operations
        offsets, coefficients = _gram_coefficients(blocks, kernel.shape[2:])
        angles = 2.0 * np.pi * (frequencies / np.asarray(size)) @ offsets.T        # (F, D)
        return _fourier_sum(angles, coefficients.reshape(len(offsets), -1)).reshape(-1, cols, cols)
    positions = np.asarray(list(itertools.product(*(range(k) for k in kernel.shape[2:]))))
    angles = 2.0 * np.pi * (frequencies / np.asarray(size)) @ positions.T          # (F, taps)
    transfer = _fourier_sum(angles, blocks.transpose(3, 0, 1, 2).reshape(taps, -1)).reshape(-1, rows, cols)
    adjoint = np.ascontiguousarray(np.conj(np.swapaxes(transfer, -1, -2)))
    return adjoint @ transfer


def _fourier_sum(angles: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """``sum_j terms[j] exp(-i angles[:, j])``: two real products, written into one complex array."""
    result = np.empty((angles.shape[0], terms.shape[1]), dtype=np.complex128)
    result.real = np.cos(angles) @ terms
    result.imag = np.sin(angles) @ terms
    np.negative(result.imag, out=result.imag)
    return result


def _half_spectrum(size: Tuple[int, ...]) -> np.ndarray:
    """The frequencies of a real d-dimensional DFT on ``size`` up to conjugation (the last axis
    from 0 to ``n // 2``), shape ``(F, d)``."""
    ranges = [range(n) for n in size[:-1]] + [range(size[-1] // 2 + 1)]
    return np.array(list(itertools.product(*ranges)), dtype=np.float64).reshape(-1, len(size))


def _gram_coefficients(blocks: np.ndarray, kernel_shape: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """The offsets ``d`` between taps, shape ``(D, d)``, and the Gram coefficients ``C_d = sum_{y - x
    = d} K_x^T K_y`` of ``blocks`` ``(g, rows, cols, taps)``, shape ``(D, g, cols, cols)``."""
    spatial = np.ascontiguousarray(np.moveaxis(blocks, -1, 1)).reshape(blocks.shape[0], *kernel_shape,
                                                                         *blocks.shape[1:3])
    offsets: List[Tuple[int, ...]] = list(itertools.product(*(range(1 - k, k) for k in kernel_shape)))
    coefficients = np.empty((len(offsets), blocks.shape[0], blocks.shape[2], blocks.shape[2]))
    for index, offset in enumerate(offsets):
        left = (slice(None), *(slice(max(0, -o), k - max(0, o)) for o, k in zip(offset, kernel_shape)))
        right = (slice(None), *(slice(max(0, o), k - max(0, -o)) for o, k in zip(offset, kernel_shape)))
        x = spatial[left].reshape(blocks.shape[0], -1, blocks.shape[2])
        y = spatial[right].reshape(blocks.shape[0], -1, blocks.shape[2])
        coefficients[index] = np.ascontiguousarray(np.swapaxes(x, 1, 2)) @ np.ascontiguousarray(y)
    return np.asarray(offsets, dtype=np.float64), coefficients


# -- the largest eigenvalue, certified ----------------------------------------------------------------
def _largest_eigenvalue_bound(gram: np.ndarray) -> float:
    """The largest eigenvalue of a batch of Hermitian positive semi-definite matrices, raised by
    at most :data:`CANDIDATE_MARGIN` and never below the exact value (to float64 rounding).

    A few power iterations rank the matrices; the largest eigenvalue of the highest ranked
    (:data:`LEADERS`), from LAPACK's symmetric eigensolver, raised by :data:`CANDIDATE_MARGIN`, is
    the candidate ``t``. A Cholesky factorisation of ``t I - G`` exists exactly where ``t >=
    lambda_max(G)``, so it certifies ``t`` for every matrix it succeeds on (LAPACK's Cholesky is
    backward stable); the few it fails on get their eigenvalues from the eigensolver too.
    Cholesky costs a fifth of an eigenvalue decomposition.
    """
    if gram.size == 0:
        return 0.0
    leaders = np.argsort(_rayleigh_quotients(gram))[-max(4, math.ceil(LEADERS * len(gram))):]
    largest = float(np.linalg.eigvalsh(gram[leaders])[..., -1].max())
    others = np.setdiff1d(np.arange(len(gram)), leaders)
    shifted = -gram[others]
    diagonal = np.arange(gram.shape[-1])
    shifted[:, diagonal, diagonal] += largest * (1.0 + CANDIDATE_MARGIN) + np.finfo(np.float64).tiny
    uncertified = others[_cholesky_failures(shifted)]
    if len(uncertified):
        largest = max(largest, float(np.linalg.eigvalsh(gram[uncertified])[..., -1].max()))
    return max(largest * (1.0 + CANDIDATE_MARGIN), 0.0)


def _rayleigh_quotients(gram: np.ndarray, steps: int = 20) -> np.ndarray:
    """Per matrix, the Rayleigh quotient after ``steps`` power iterations from a fixed random
    start (a lower bound of its largest eigenvalue)."""
    start = np.random.default_rng(0).standard_normal((gram.shape[0], gram.shape[-1], 1))
    vector = start / np.linalg.norm(start, axis=1, keepdims=True)
    for _ in range(steps):
        vector = gram @ vector
        norms = np.linalg.norm(vector, axis=1, keepdims=True)
        vector = vector / np.where(norms > 0, norms, 1.0)
    return np.real(np.conj(np.swapaxes(vector, -1, -2)) @ gram @ vector).reshape(-1)


def _cholesky_failures(matrices: np.ndarray, chunk: int = 32) -> np.ndarray:
    """The indices of the Hermitian matrices that have no Cholesky factorisation. LAPACK is
    called on ``chunk`` matrices at a time (numpy raises for a batch without saying which
    failed, after factorising all of them), and one at a time in a chunk that fails."""
    failures = []
    for first in range(0, len(matrices), chunk):
        if not _factorises(matrices[first:first + chunk]):
            failures += [first + i for i in range(min(chunk, len(matrices) - first))
                         if not _factorises(matrices[first + i])]
    return np.asarray(failures, dtype=np.int64)


def _factorises(matrices: np.ndarray) -> bool:
    """Whether LAPACK factorises every matrix of ``matrices`` (one, or a batch)."""
    try:
        np.linalg.cholesky(matrices)
    except np.linalg.LinAlgError:
        return False
    return True


def _polyphase(kernel: np.ndarray, size: Tuple[int, ...],
               stride: Tuple[int, ...]) -> Tuple[np.ndarray, Tuple[int, ...]]:
    """A stride-``stride`` kernel ``(A, B, *k)`` as the stride-1 kernel ``(A, B * prod(stride),
    *ceil(k / stride))`` over the input's phases, and the phases' size ``ceil(size / stride)``."""
    if all(s == 1 for s in stride):
        return kernel, size
    a, b = kernel.shape[:2]
    taps = tuple(-(-k // s) for k, s in zip(kernel.shape[2:], stride))
    padded = np.zeros((a, b, *(t * s for t, s in zip(taps, stride))))
    padded[(slice(None), slice(None), *(slice(0, k) for k in kernel.shape[2:]))] = kernel
    spatial = len(stride)
    # (a, b, t_1, s_1, t_2, s_2, ...) -> (a, b, s_1, s_2, ..., t_1, t_2, ...)
    split = padded.reshape(a, b, *(n for t, s in zip(taps, stride) for n in (t, s)))
    order = (0, 1, *(3 + 2 * i for i in range(spatial)), *(2 + 2 * i for i in range(spatial)))
    phases = split.transpose(order).reshape(a, b * int(np.prod(stride)), *taps)
    return phases, tuple(-(-n // s) for n, s in zip(size, stride))
