"""Operator norms of convolutions, exactly (Sedghi, Gupta and Long 2019), and of matrices.

A convolution with circular padding on inputs of spatial size ``n`` is block-circulant: its
singular values are those of the ``(out, in)`` transfer matrices

    P(f) = sum_x K[:, :, x] exp(-2 pi i <f, x / n>),   f in {0, ..., n - 1}^d

one per frequency ``f`` of the d-dimensional discrete Fourier transform, so its operator norm
(largest singular value) is ``max_f sigma_max(P(f))``. With zero padding ``p`` the convolution is
a circular one (of the taps that meet the input, on a circle of at least ``n + p``:
:func:`zero_padded_embedding`) restricted to its valid outputs, and with a stride it is
followed by a subsampling: the circular norm is an upper bound there, and the stride is
computed exactly by the polyphase decomposition. A dilated kernel is the
kernel with zeros between its taps. With ``groups`` the operator is block-diagonal, one block per
group. A transposed convolution is the adjoint of a convolution with the same kernel, and has
its singular values.

``sigma_max(P(f))^2`` is the largest eigenvalue of the Gram matrix ``G(f) = P(f)^* P(f)`` (of the
smaller side), itself a trigonometric polynomial with one coefficient per tap offset ``d``:
``G(f) = sum_d C_d exp(-2 pi i <f, d / n>)``, ``C_d = sum_{y - x = d} K_x^T K_y``. For small kernels
on large inputs the ``C_d`` cost far fewer operations than one Gram matrix per frequency, and
are used then. Every product is of matrices stored contiguously or transposed from that (numpy
hands only those to BLAS; others take its loop, a hundred times slower). Everything is computed
in float64 with numpy (a host round trip); the results are rounded up by :data:`ROUND_UP`, far
above the computations' errors, so they are upper bounds.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from .cores import across_cores
from .host import host_copy
from ..errors import ConstraintArgumentError

__all__ = ["conv_operator_norm", "dense_operator_norm", "largest_singular_value", "ROUND_UP", "tap_positions",
           "on_grid", "tap_angles", "transfer_matrices", "taps_of", "zero_padded_embedding"]

#: The relative amount by which computed operator norms are rounded up, far above the float64
#: errors of the Gram matrices and of LAPACK (about ``n * 1e-16``), so that they are upper bounds.
ROUND_UP = 1e-9

#: The matrices whose estimated largest eigenvalue is within this relative distance of the
#: highest estimate get an exact eigenvalue; the others are certified below the largest of
#: those by Cholesky.
LEADER_WINDOW = 1e-3

#: At most this many of them (the highest estimates).
LEADERS = 4

#: The Lanczos steps that rank the matrices by their largest eigenvalue: enough that no
#: ResNet-18 layer's ranking misleads the Cholesky test, where a miss costs an eigensolver call.
LANCZOS_STEPS = 12

#: The Lanczos steps that compute a leading matrix's largest eigenvalue (certified by one
#: Cholesky factorisation): on ResNet-18's Gram matrices of 128 to 512 rows, 40 steps come
#: within 1e-10 of it (the eigensolver's answer) in a tenth of its time at 512 rows, half at 128.
TOP_LANCZOS_STEPS = 40

#: A Lanczos step whose new direction is shorter than this, relative to the matrix's scale so
#: far, has found an invariant subspace: the rest is rounding and is dropped.
LANCZOS_BREAKDOWN = 1e-12

#: A batch with at least as many matrices as rows (a large input's frequencies) takes fewer: an
#: eigensolver call for a misranked matrix is cheap there, and Lanczos steps over all are not.
MANY_MATRICES_LANCZOS_STEPS = 4

#: Matrices factorised per LAPACK call are at most this many 64 x 64 ones' worth (at least
#: one): numpy's loop over a batch saves Python calls, and a batch that fails is factorised
#: again one matrix at a time.
CHOLESKY_BATCH = 16 * 64 ** 3

#: How far above the leading Gram matrices' largest eigenvalue the Cholesky test of the others is
#: made: the computed norms are exact to this relative amount (half of it, for singular values).
CANDIDATE_MARGIN = 1e-7

def dense_operator_norm(weight: np.ndarray) -> float:
    """The largest singular value of a matrix (a Dense weight ``(units, in_units)``), rounded up
    by :data:`ROUND_UP`."""
    matrix, exponent = _unit_scaled(np.asarray(weight, dtype=np.float64).reshape(weight.shape[0], -1))
    if matrix.shape[0] < matrix.shape[1]:
        matrix = matrix.T
    return _scaled_back(math.sqrt(_largest_eigenvalue_bound((matrix.T @ matrix)[None])) * (1.0 + ROUND_UP), exponent)


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
    kernel, exponent = _unit_scaled(kernel)
    # a tap past the circle (a multiple of the stride) acts where it wraps to: the dilated kernel
    # never needs to be wider than the circle, however large the dilation
    circle = [-(-n // s) * s for n, s in zip(size, stride)]
    extent = tuple(min((k - 1) * d + 1, c) for k, d, c in zip(kernel.shape[2:], dilation, circle))
    dilated = on_grid(kernel, extent, dilation)
    phases, size = _polyphase(dilated, tuple(size), stride)
    phases = phases[:, np.flatnonzero(phases.reshape(*phases.shape[:2], -1).any(axis=(0, 2)))]
    if phases.size == 0:
        return 0.0
    if np.prod(phases.shape[2:]) == 1:  # one tap: the same transfer matrix (up to a phase) at every frequency
        size = (1,) * len(size)
    norm = math.sqrt(_largest_eigenvalue_bound(_gram_matrices(phases, size, groups))) * (1.0 + ROUND_UP)
    return _scaled_back(norm, exponent)


def zero_padded_embedding(kernel_shape: Sequence[int], size: Sequence[int], padding: Sequence[int],
                          stride: Sequence[int], dilation: Sequence[int]) -> Tuple[Tuple[slice, ...], Tuple[int, ...]]:
    """Where a zero-padded convolution sits inside a circular one: the taps that ever meet the
    input (a slice per spatial axis) and the smallest circular size whose circular convolution
    with those taps contains it.

    Per axis, with input size ``n``, padding ``p``, stride ``s``, dilation ``d`` and ``n_out``
    outputs, tap ``j`` of output ``i`` reads input ``m = i s + j d - p``, a zero outside ``[0,
    n)``. Taps that read only zeros are dropped, leaving ``j_lo .. j_hi``, so reads run from
    ``m_min = j_lo d - p`` to ``m_max = (n_out - 1) s + j_hi d - p``. On a circle of

        N >= max(n - min(m_min, 0), m_max + 1, (n_out - 1) s + 1),   a multiple of s,

    every read outside ``[0, n)`` lands on the input's zero extension, so the zero-padded
    convolution is the circular one between an isometric embedding of its inputs and a subset
    of its outputs: :func:`conv_operator_norm` on ``N`` bounds its norm, and equals it where
    ``N = n`` and every output is kept (an input of size 1 has one live tap: exact).

    Parameters
    ----------
    kernel_shape, size, padding, stride, dilation : sequences of d ints
        The kernel's spatial shape, the input's spatial size (a transposed convolution's output:
        it is the adjoint of the convolution from there) and the layer's settings.

    Returns
    -------
    (tuple of slice, tuple of int)
        The live taps of each axis and ``N`` per axis.
    """
    taps, circle = [], []
    for k, n, p, s, d in zip(kernel_shape, size, padding, stride, dilation):
        outputs = (n + 2 * p - d * (k - 1) - 1) // s + 1
        live = [j for j in range(k) if any(0 <= i * s + j * d - p < n for i in range(outputs))]
        if not live:  # no tap meets the input (a zero operator): tap 0 gives some upper bound
            live = [0]
        first, last = live[0], live[-1]
        reads = (first * d - p, (outputs - 1) * s + last * d - p)
        needed = max(n - min(reads[0], 0), reads[1] + 1, (outputs - 1) * s + 1)
        taps.append(slice(first, last + 1))
        circle.append(-(-needed // s) * s)
    return tuple(taps), tuple(circle)


def _checked(kernel: Any, size: Any, dilation: Any, groups: Any,
             stride: Any) -> Tuple[np.ndarray, Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]:
    """:func:`conv_operator_norm`'s arguments as float64 and tuples, or a ConstraintArgumentError
    naming the one that is wrong."""
    values = host_copy(kernel) if hasattr(kernel, "asnumpy") else kernel
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
    if array.size == 0:
        raise ConstraintArgumentError(
            f"conv_operator_norm kernel has no entries: got shape {array.shape}; every axis needs at least one.")
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
    matrices, exponent = _unit_scaled(np.ascontiguousarray(matrices.reshape(-1, *matrices.shape[-2:])))
    if matrices.shape[-2] < matrices.shape[-1]:
        matrices = np.ascontiguousarray(np.swapaxes(matrices, -1, -2))
    gram = np.empty((len(matrices), matrices.shape[-1], matrices.shape[-1]), dtype=matrices.dtype)

    def multiply(part: slice) -> None:  # the adjoint is laid out transposed, which BLAS takes
        np.matmul(np.conj(np.swapaxes(matrices[part], -1, -2)), matrices[part], out=gram[part])

    across_cores(multiply, len(matrices))
    return _scaled_back(math.sqrt(_largest_eigenvalue_bound(gram)), exponent)


def _unit_scaled(array: np.ndarray) -> Tuple[np.ndarray, int]:
    """``array`` (contiguous, real or complex) divided by ``2^e``, exactly, so that its largest
    magnitude lies in ``[0.5, 1)``, and ``e`` (``array`` itself and 0 if it is zero). The Gram
    matrices square the entries: unscaled, entries above ``1e154`` overflow and entries below
    ``1e-154`` fall into float64's subnormals, where they lose their digits and the norm comes out
    below the true one."""
    largest = float(np.abs(array).max(initial=0.0))
    if largest == 0.0:
        return array, 0
    exponent = math.frexp(largest)[1]
    parts = np.ascontiguousarray(array).view(np.float64)  # a complex array's real and imaginary parts
    return np.ldexp(parts, -exponent).view(array.dtype), exponent


def _scaled_back(norm: float, exponent: int) -> float:
    """``norm * 2^exponent``, infinite where that is beyond float64 (still an upper bound)."""
    try:
        return math.ldexp(norm, exponent)
    except OverflowError:
        return math.inf


def tap_positions(kernel_shape: Sequence[int], size: Sequence[int], dilation: Sequence[int]) -> np.ndarray:
    """For each tap ``x`` of a kernel (in ``np.ndindex`` order), its flat position ``x * dilation``
    on the circular grid of ``size`` (wrapped around where the dilated kernel is larger)."""
    return np.ravel_multi_index(tuple(_wrapped_taps(kernel_shape, size, dilation).T), tuple(size))


def _wrapped_taps(kernel_shape: Sequence[int], size: Sequence[int], dilation: Sequence[int]) -> np.ndarray:
    """Each tap's coordinates ``x * dilation`` on the circle of ``size`` (``np.ndindex`` order),
    shape ``(taps, d)``."""
    taps = np.array(list(itertools.product(*(range(k) for k in kernel_shape))), dtype=np.int64)
    return (taps * np.asarray(dilation, dtype=np.int64)) % np.asarray(size, dtype=np.int64)


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
        for position in np.unique(positions):
            grid[:, :, position] = _wrapped_sum(taps[:, :, positions == position])
    return grid.reshape(a, b, *size)


#: A sum of taps below this fraction of the sum of their magnitudes is taken exactly.
CANCELLING = 2.0 ** -10


def _wrapped_sum(terms: np.ndarray) -> np.ndarray:
    """Sums over the last axis of taps that wrap onto one position. numpy's sum errs by up to
    ``(k - 1) u sum |x|`` (``k`` terms, ``u = 2^-53``), which is relative to the sum only where
    the terms do not cancel: where the sum is below :data:`CANCELLING` times ``sum |x|`` it is
    taken by ``math.fsum``, correctly rounded (``1 + 2^-60 - 1`` is ``2^-60``, not 0), and
    elsewhere its relative error is at most ``2^10 (k - 1) u``, far below :data:`ROUND_UP`."""
    sums = terms.sum(axis=-1)
    for index in zip(*np.nonzero(np.abs(sums) < CANCELLING * np.abs(terms).sum(axis=-1))):
        sums[index] = math.fsum(terms[index])
    return sums


def tap_angles(kernel_shape: Sequence[int], size: Sequence[int], dilation: Sequence[int]) -> np.ndarray:
    """The phases ``2 pi <f, x * dilation / size>`` of each tap ``x`` of a kernel (in ``np.ndindex``
    order) at each frequency ``f`` of the half spectrum of ``size`` (:func:`_half_spectrum`'s
    order), shape ``(F, taps)``; a position past the circle wraps around it."""
    wrapped = _wrapped_taps(kernel_shape, size, dilation)
    return 2.0 * np.pi * (_half_spectrum(tuple(size)) / np.asarray(size)) @ wrapped.T


def transfer_matrices(taps: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """``sum_x taps[..., x] exp(-i angles[:, x])`` for taps ``(..., taps)`` and their
    :func:`tap_angles`: the transfer matrices at each frequency, shape ``(F, ...)`` (a kernel's
    ``(A, B, taps)`` gives ``P(f)``)."""
    terms = taps.reshape(-1, taps.shape[-1]).T
    return _fourier_sum(angles, terms, angles, terms).reshape(len(angles), *taps.shape[:-1])


def taps_of(matrices: np.ndarray, angles: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """The taps whose transfer matrices are nearest ``matrices`` ``(F, ...)`` given on the half
    spectrum of ``size``, shape ``(..., taps)``: the inverse transform read at the taps,

        K_x = (1 / N) sum_f w_f Re(M(f) exp(i angles[f, x])),   N = prod(size),

    with ``w_f = 1`` where ``f``'s last index is 0 or ``size[-1] / 2`` (its conjugate is in the
    half spectrum) and 2 elsewhere (its conjugate, not stored, adds the conjugate term): numpy's
    ``irfftn`` at the taps' positions, without the grid."""
    last = _half_spectrum(tuple(size))[:, -1]
    weights = np.where((last == 0) | (2 * last == size[-1]), 1.0, 2.0) / float(np.prod(size))
    phases = weights[:, None] * np.exp(1j * angles)                                  # (F, taps)
    flat = matrices.reshape(len(matrices), -1)
    return (phases.T @ flat).real.T.reshape(*matrices.shape[1:], angles.shape[1])


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
        # G = C_0 + sum_{d > 0} cos(theta_d) (C_d + C_d^T) - i sin(theta_d) (C_d - C_d^T), as C_{-d} = C_d^T
        angles = 2.0 * np.pi * (frequencies / np.asarray(size)) @ offsets[1:].T     # (F, D), the d > 0
        transposed = np.swapaxes(coefficients[1:], -1, -2)
        symmetric = np.concatenate([coefficients[:1], coefficients[1:] + transposed])
        width = coefficients[0].size
        gram = _fourier_sum(np.concatenate([np.zeros((len(angles), 1)), angles], axis=1),
                            symmetric.reshape(-1, width), angles, (coefficients[1:] - transposed).reshape(-1, width))
        return gram.reshape(-1, cols, cols)
    angles = tap_angles(kernel.shape[2:], size, (1,) * len(size))
    transfer = transfer_matrices(blocks, angles).reshape(-1, rows, cols)
    adjoint = np.ascontiguousarray(np.conj(np.swapaxes(transfer, -1, -2)))
    return adjoint @ transfer


def _fourier_sum(cosine_angles: np.ndarray, cosine_terms: np.ndarray,
                 sine_angles: np.ndarray, sine_terms: np.ndarray) -> np.ndarray:
    """``sum_j cos(a[:, j]) R[j] - i sum_j sin(b[:, j]) Q[j]`` for real terms ``R`` ``(J, M)`` and
    ``Q`` ``(J', M)``, shape ``(F, M)``: one real product whose output rows interleave the real
    and imaginary parts, read as a complex array (``[cos | sin] @ [[R, 0], [0, -Q]]``, a quarter
    of a complex product's multiplications; writing into a complex array's halves instead goes
    through numpy's strided copy, several times slower)."""
    terms = np.empty((len(cosine_terms) + len(sine_terms), cosine_terms.shape[1], 2))
    real, imaginary = terms[:len(cosine_terms)], terms[len(cosine_terms):]
    real[..., 0], real[..., 1] = cosine_terms, 0.0
    imaginary[..., 0] = 0.0
    np.negative(sine_terms, out=imaginary[..., 1])
    weights = np.concatenate([np.cos(cosine_angles), np.sin(sine_angles)], axis=1)
    return (weights @ terms.reshape(len(terms), -1)).view(np.complex128)


def _half_spectrum(size: Tuple[int, ...]) -> np.ndarray:
    """The frequencies of a real d-dimensional DFT on ``size`` up to conjugation (the last axis
    from 0 to ``n // 2``), shape ``(F, d)``."""
    ranges = [range(n) for n in size[:-1]] + [range(size[-1] // 2 + 1)]
    return np.array(list(itertools.product(*ranges)), dtype=np.float64).reshape(-1, len(size))


def _gram_coefficients(blocks: np.ndarray, kernel_shape: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """The offsets ``d >= 0`` between taps (``d = 0`` first, then those after it in
    ``np.ndindex`` order; the others are their negatives), shape ``(D, d)``, and the Gram
    coefficients ``C_d = sum_{y - x = d} K_x^T K_y`` of ``blocks`` ``(g, rows, cols, taps)``, shape
    ``(D, g, cols, cols)`` (``C_{-d} = C_d^T``): per offset and group one product of the stacked
    taps ``[K_x]^T [K_{x + d}]``, so BLAS sees few large products."""
    g, cols = blocks.shape[0], blocks.shape[2]
    taps = np.ascontiguousarray(np.moveaxis(blocks, -1, 1))                        # (g, taps, rows, cols)
    positions = list(itertools.product(*(range(k) for k in kernel_shape)))
    index = {position: i for i, position in enumerate(positions)}
    offsets: List[Tuple[int, ...]] = list(itertools.product(*(range(1 - k, k) for k in kernel_shape)))
    offsets = offsets[len(offsets) // 2:]  # the offsets are symmetric about the middle one, 0
    coefficients = np.empty((len(offsets), g, cols, cols))
    for i, offset in enumerate(offsets):
        pairs = [(index[x], index[y]) for x in positions
                 if (y := tuple(s + d for s, d in zip(x, offset))) in index]
        starts, ends = (list(side) for side in zip(*pairs))
        for group in range(g):
            left = taps[group, starts].reshape(-1, cols)
            right = left if i == 0 else taps[group, ends].reshape(-1, cols)  # the same array: BLAS's SYRK
            np.matmul(left.T, right, out=coefficients[i, group])
    return np.asarray(offsets, dtype=np.float64), coefficients


# -- the largest eigenvalue, certified ----------------------------------------------------------------
def _largest_eigenvalue_bound(gram: np.ndarray) -> float:
    """The largest eigenvalue of a batch of Hermitian positive semi-definite matrices, raised by
    at most :data:`CANDIDATE_MARGIN` and never below the exact value (to float64 rounding).
    ``gram`` is overwritten.

    A few Lanczos steps estimate each matrix's largest eigenvalue from below (its largest Ritz
    value). The matrices whose estimate is within :data:`LEADER_WINDOW` of the highest (at most
    :data:`LEADERS` of them) get their largest eigenvalue to :data:`CANDIDATE_MARGIN`
    (:func:`_top_eigenvalue`); the largest of those, raised by :data:`CANDIDATE_MARGIN`, is the
    candidate ``t``. A Cholesky
    factorisation of ``t I - G`` exists exactly where ``t >= lambda_max(G)``, so it certifies
    ``t`` for every other matrix it succeeds on (LAPACK's Cholesky is backward stable); the few
    it fails on (where the estimates misled) get their eigenvalues from the eigensolver too.
    Cholesky costs a third of an eigenvalue decomposition.
    """
    if gram.size == 0:
        return 0.0
    if len(gram) == 1:
        return max(_top_eigenvalue(gram[0]) * (1.0 + CANDIDATE_MARGIN), 0.0)
    steps = MANY_MATRICES_LANCZOS_STEPS if len(gram) >= gram.shape[-1] else LANCZOS_STEPS
    estimates = _ritz_values(gram, steps)
    order = np.argsort(estimates)[::-1]
    leading = estimates[order] >= estimates[order[0]] * (1.0 - LEADER_WINDOW)
    leading[LEADERS:] = False  # a flat spectrum (a projection's) has many: Cholesky passes those
    largest = max(_top_eigenvalue(matrix) for matrix in gram[order[leading]])
    others = np.ones(len(gram), dtype=bool)
    others[order[leading]] = False
    candidate = largest * (1.0 + CANDIDATE_MARGIN) + float(np.finfo(np.float64).tiny)
    diagonal = np.arange(gram.shape[-1])
    diagonals = gram[:, diagonal, diagonal]

    def certify(part: slice) -> np.ndarray:
        shifted = gram[part]  # becomes candidate * I - G, in place
        np.negative(shifted, out=shifted)
        shifted[:, diagonal, diagonal] += candidate
        return part.start + _cholesky_failures(shifted, others[part])

    uncertified = np.concatenate(across_cores(certify, len(gram)))
    if len(uncertified):
        failed = np.negative(gram[uncertified])  # back to G, the diagonal exactly
        failed[:, diagonal, diagonal] = diagonals[uncertified]
        largest = max(largest, _largest_eigenvalue(failed))
    return max(largest * (1.0 + CANDIDATE_MARGIN), 0.0)


def _top_eigenvalue(matrix: np.ndarray) -> float:
    """A Hermitian positive semi-definite matrix's largest eigenvalue ``lambda``, or a value
    ``theta`` with ``theta (1 - CANDIDATE_MARGIN / 2) < lambda <= theta (1 + CANDIDATE_MARGIN)``:
    the largest Ritz value of :data:`TOP_LANCZOS_STEPS` Lanczos steps, where Cholesky shows both
    sides (``t I - G`` factorises exactly when ``t >= lambda``, so it must factorise at the upper
    end and fail at the lower one; Lanczos's value is below ``lambda`` in exact arithmetic, and
    the lower test catches rounding that lifted it); LAPACK's eigensolver where they do not
    (Lanczos converged too slowly, or went wrong). The steps and the factorisations cost a few
    times less than the eigensolver."""
    theta = float(_ritz_values(matrix[None], TOP_LANCZOS_STEPS)[0])
    if math.isfinite(theta) and _factorises(_shifted(matrix, theta * (1.0 + CANDIDATE_MARGIN)
                                                     + float(np.finfo(np.float64).tiny))):
        if not _factorises(_shifted(matrix, theta * (1.0 - CANDIDATE_MARGIN / 2))):
            return theta
    return _largest_eigenvalue(matrix[None])


def _shifted(matrix: np.ndarray, shift: float) -> np.ndarray:
    """``shift * I - matrix``."""
    shifted = np.negative(matrix)
    diagonal = np.arange(matrix.shape[-1])
    shifted[diagonal, diagonal] += shift
    return shifted


def _largest_eigenvalue(gram: np.ndarray) -> float:
    """The largest eigenvalue in a batch of Hermitian matrices, from LAPACK; real ones (the
    frequencies where every phase is +-1) by the real solver, four times cheaper."""
    if np.iscomplexobj(gram) and not gram.imag.any():
        gram = np.ascontiguousarray(gram.real)
    return float(np.linalg.eigvalsh(gram)[..., -1].max())


def _ritz_values(gram: np.ndarray, steps: int) -> np.ndarray:
    """Per matrix, the largest Ritz value of ``steps`` Lanczos steps (fully reorthogonalised)
    from a fixed random start: a lower bound of its largest eigenvalue, close to it for the
    flat tops of convolutions' spectra, where power iterations are not.

    Where the spectrum is bunched away from zero (orthogonal weights, tall Gaussian ones) each
    new direction is a small difference of large vectors, and one reorthogonalisation leaves it
    far from orthogonal: the Ritz values then grow past the top (48 for a top of 1.06). Each
    step is reorthogonalised twice, which keeps the vectors orthogonal to rounding."""
    count, n = gram.shape[0], gram.shape[-1]
    steps = min(steps, n)
    basis = np.zeros((count, n, steps), dtype=gram.dtype)            # the Lanczos vectors as columns
    adjoint = np.zeros((count, steps, n), dtype=gram.dtype)          # and conjugated, as rows
    tridiagonal = np.zeros((count, steps, steps))
    vector = np.random.default_rng(0).standard_normal((count, n, 1)).astype(gram.dtype)
    vector /= np.linalg.norm(vector, axis=1, keepdims=True)
    for j in range(steps):
        basis[:, :, j:j + 1] = vector
        adjoint[:, j:j + 1] = np.conj(np.swapaxes(vector, 1, 2))
        image = gram @ vector
        coefficients = adjoint[:, :j + 1] @ image                   # full reorthogonalisation,
        tridiagonal[:, j, j] = coefficients[:, j, 0].real
        image -= basis[:, :, :j + 1] @ coefficients
        image -= basis[:, :, :j + 1] @ (adjoint[:, :j + 1] @ image)  # twice: see the docstring
        if j + 1 < steps:
            norms = np.linalg.norm(image, axis=1, keepdims=True)
            # an invariant subspace is found where the rest is rounding: normalising that would
            # add a vector that is not orthogonal to the others, and Ritz values above the top
            scale = np.abs(tridiagonal[:, :j + 1, :j + 1]).max(axis=(1, 2))[:, None, None]
            alive = norms > LANCZOS_BREAKDOWN * scale
            tridiagonal[:, j, j + 1] = tridiagonal[:, j + 1, j] = np.where(alive, norms, 0.0)[:, 0, 0]
            vector = np.where(alive, image / np.where(alive, norms, 1.0), 0.0)
    return np.linalg.eigvalsh(tridiagonal)[:, -1]


def _cholesky_failures(shifted: np.ndarray, tested: np.ndarray) -> np.ndarray:
    """The indices of the matrices of ``shifted`` marked in the boolean mask ``tested`` that have
    no Cholesky factorisation. LAPACK is called on slices (not copies) of :data:`CHOLESKY_BATCH`;
    numpy raises for a batch without saying which failed, after factorising all of them, so a
    slice that fails, or holds an untested matrix, is factorised one tested matrix at a time."""
    chunk = max(1, CHOLESKY_BATCH // shifted.shape[-1] ** 3)
    failures: List[int] = []
    for start in range(0, len(shifted), chunk):
        stop = min(start + chunk, len(shifted))
        if tested[start:stop].all() and _factorises(shifted[start:stop]):
            continue
        failures += [i for i in range(start, stop) if tested[i] and not _factorises(shifted[i])]
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
