"""The Constraint contract: what every constraint family provides.

A family is a :class:`Constraint` subclass in a module of its own in this package, registered
where it is defined (``@register_constraint``), that provides

- ``__init__``: validates and stores its arguments (with :func:`real_argument`,
  :func:`bound_argument`), and nothing else; the object is immutable afterwards;
- :meth:`Constraint.project`: the projection of a weight, given the reduction resolved for it,
  as a new array. It is the one method a family overrides to project;
- :meth:`Constraint.get_config`: its constructor arguments, JSON-serializable;
- the declarations, as class attributes: ``locality`` (:data:`ELEMENTWISE`, :data:`PER_UNIT`
  or :data:`WHOLE`: where it can run; a parameter server holding a piece of a weight runs
  elementwise constraints only), ``convex`` (the projection is the nearest point of a closed
  convex set), ``layered`` (with ``axis=None`` the projection reads the owning layer's
  layout), ``stateful`` (it carries state between training steps, through
  :meth:`Constraint.continue_from`) and ``scheduled`` (it follows the update count);
- optionally :meth:`Constraint.check_shape`, for families that fit only some weights.

A family that the fused kernel can compute registers its lowering next to it
(:func:`~gluon_constraints.catalogue.lowering.lowers_to_rows`). Only ``mxnet.ndarray`` is
imported: parameter servers import the catalogue while ``import mxnet`` is still running.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import sys
from numbers import Real
from typing import Any, Dict, Optional, Sequence, Tuple, Type, TypeVar

import numpy as np
from mxnet.ndarray import NDArray

from ..errors import ConstraintArgumentError, ConstraintShapeError, ConstraintTypeError, ImmutableConstraintError
from .reduction import Axis, Reduction, normalize_axes, per_output_unit, viewed

__all__ = ["Constraint", "BOUNDARY_RTOL", "ELEMENTWISE", "PER_UNIT", "WHOLE",
           "real_argument", "bound_argument", "axis_config", "check_array", "check_dtype"]

#: Locality values: what one entry's result depends on.
ELEMENTWISE, PER_UNIT, WHOLE = "elementwise", "per_unit", "whole"

# A norm within this relative distance of a bound counts as on the bound. Rounding the rescaled
# entries and recomputing the norm moves it by a few units in the last place; without the band a
# slice on the boundary would be rescaled again on every step (the hidden decay Keras's epsilon
# causes) and a second projection would not equal the first. float16 weights are rescaled in
# float32 but stored in float16, so their band is relative to float16's precision.
BOUNDARY_RTOL = {np.dtype(np.float16): 2.0**-10, np.dtype(np.float32): 2.0**-18,
                 np.dtype(np.float64): 2.0**-44}

# Weights are computed in float32 at least: a bound must be a normal float32 number.
_FLOAT32 = np.finfo(np.float32)
_BOUND_RANGE = (float(_FLOAT32.tiny), float(_FLOAT32.max))


_Built = TypeVar("_Built", bound="Constraint")  # from_config builds the class it is called on


class _Immutable(type):
    """Metaclass that freezes a constraint once its ``__init__`` has run."""

    @property
    def __signature__(cls) -> inspect.Signature:
        """The constructor's signature (help() and IDEs would read ``__call__``'s otherwise)."""
        init_function = getattr(cls, "__init__")  # the class's constructor (cls is a class here)
        if init_function is object.__init__:
            return inspect.Signature()
        init = inspect.signature(init_function)
        return init.replace(parameters=list(init.parameters.values())[1:])

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        instance = super().__call__(*args, **kwargs)
        object.__setattr__(instance, "_frozen", True)
        return instance


class Constraint(metaclass=_Immutable):
    """Base class of all constraints: a projection of a weight onto an allowed set.

    ``c(w)`` returns a new array of the same kind (``mx.nd.NDArray`` or ``mx.np.ndarray``),
    shape, dtype and context as ``w`` and never modifies ``w``. float16 weights are computed in
    float32 and returned as float16. The base class itself is the identity.

    Constraints are immutable once built: every path (the fused kernel, stock operators, the
    parameter servers' copy) computes with the values given at construction. To change a bound,
    build a new constraint and attach it.
    """

    #: Reduction axes in the weight's own layout; None means per output unit.
    axis: Axis = None
    #: What one entry's result depends on: ELEMENTWISE, PER_UNIT or WHOLE. PER_UNIT is the safe
    #: default: parameter servers holding a piece of a weight refuse it instead of running it.
    locality: str = PER_UNIT
    #: Whether the projection is the nearest point of a closed convex set (hence non-expansive).
    #: False unless a family declares it.
    convex: bool = False
    #: Whether, with ``axis=None``, the projection reads the owning layer's layout (its
    #: per-unit slices, a convolution's kernel axes). False for elementwise families and for
    #: functions of the whole weight.
    layered: bool = True
    #: Whether the family carries state from one training step to the next
    #: (:meth:`continue_from`); the trainer keeps it per parameter and device copy.
    stateful: bool = False
    #: Whether the projection follows the parameter's update count (a ``Scheduled`` constraint's
    #: ``at(update)``); the trainer resolves it at every update.
    scheduled: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        project = cls.__dict__.get("project")
        if project is not None and list(inspect.signature(project).parameters)[2:3] == ["axes"]:
            cls.project = _projecting_views(project)  # type: ignore[method-assign]

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_frozen"):
            raise ImmutableConstraintError(
                f"{type(self).__name__} is immutable: cannot set {name!r} to {value!r}. Build a "
                f"new constraint (e.g. {type(self).__name__}(...)) and attach it with gc.attach "
                f"or gc.constrain; every path then uses the new values.")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise ImmutableConstraintError(
            f"{type(self).__name__} is immutable: cannot delete {name!r}. Build a new constraint "
            f"and attach it with gc.attach or gc.constrain.")

    def __setstate__(self, state: Dict[str, Any]) -> None:
        # Unpickled and copied constraints are frozen too (files written by 0.1.0 included).
        self.__dict__.update(state)
        self.__dict__["_frozen"] = True

    @property
    def elementwise(self) -> bool:
        """Whether each entry's result depends on that entry alone (``locality == ELEMENTWISE``)."""
        return self.locality == ELEMENTWISE

    def at(self, update: int) -> "Constraint":
        """The constraint in force at the parameter's update ``update`` (1 for the first): the
        constraint itself, except for a ``scheduled`` one (``Scheduled``), whose bound follows
        the update count."""
        return self

    # -- what a family overrides ---------------------------------------------------------------
    def project(self, w: NDArray, reduction: Reduction, boundary_rtol: float) -> NDArray:
        """Return the projection of ``w`` as a new array (the identity here).

        The one method a family overrides to project.

        Parameters
        ----------
        w : mx.nd.NDArray
            The weight in its own shape, in the computation dtype (float32 or float64). It is
            not modified.
        reduction : Reduction
            The slices to project, resolved for ``w`` (:meth:`reduction_for`): ``w`` viewed
            with ``reduction.view_shape`` (None: its own shape), one slice per index of the axes
            not in ``reduction.axes``; ``reduction.kernel_axes`` are a convolution's spatial
            axes. :func:`~gluon_constraints.catalogue.reduction.viewed` gives the view.
        boundary_rtol : float
            Relative distance from a bound within which a norm counts as on it.
        """
        return w.copy()

    def continue_from(self, w: NDArray, reduction: Reduction, boundary_rtol: float,
                      state: Any) -> Tuple[NDArray, Any]:
        """Project ``w`` continuing from the ``state`` the last training step left; return the
        projection and the new state.

        Families that declare ``stateful = True`` override it (``SpectralNorm`` continues its
        power iteration); here it is :meth:`project`, with no state. ``state`` is None at a
        parameter's first step. Arguments as in :meth:`project`.
        """
        return self.project(w, reduction, boundary_rtol), None

    def check_shape(self, shape: Tuple[int, ...], reduction: Reduction, name: Optional[str]) -> None:
        """Refuse a weight of ``shape`` this family cannot project (nothing here).

        Called by :meth:`validate` with the resolved reduction, when a constraint is attached
        and when the shape becomes known. ``name`` is the parameter's, for the message.

        Raises
        ------
        ConstraintShapeError
            In a family that does not fit every weight (``RadialConstraint``: square 2-D kernels).
        """

    def get_config(self) -> Dict[str, Any]:
        """Return the constructor arguments as a JSON-serializable dict."""
        return {}

    # -- what every constraint does the same way -------------------------------------------------
    def __call__(self, w: NDArray, reduction: Optional[Reduction] = None) -> NDArray:
        """Project ``w`` and return the result as a new array.

        Parameters
        ----------
        w : mx.nd.NDArray or mx.np.ndarray
            The weight: dense, floating point (float16, float32 or float64). It is not modified.
        reduction : Reduction or None, default None
            Per-output-unit slices to use when the constraint's ``axis`` is None. None means the
            bare-array default: every axis but 0 (axis 0 of a 1-D array). Layers pass their
            fan-in reduction here.

        Returns
        -------
        mx.nd.NDArray or mx.np.ndarray
            The projected weight, same kind, shape, dtype and context as ``w``. An empty
            ``mx.np`` array comes back as an empty copy; a 0-d one is treated as a vector of one
            entry.

        Raises
        ------
        ConstraintTypeError
            If ``w`` is not an array, not dense, or not floating point.
        ConstraintShapeError
            If ``w`` is a classic ``mx.nd.NDArray`` with an empty or 0-d shape while MXNet's
            numpy shape semantics are off (MXNet reads those as unknown shapes then).
        """
        check_array(w, type(self).__name__)
        numpy_mode = _is_numpy_array(w)
        shape = tuple(w.shape)
        if not numpy_mode and (not shape or 0 in shape) and _numpy_shapes():
            # With numpy shape semantics on, a classic array's () or 0 is what it says (the
            # kvstore and the optimizer hand parameters over as classic arrays).
            return self(w.as_np_ndarray(), reduction).as_nd_ndarray()
        if not numpy_mode and (not shape or 0 in shape):
            raise ConstraintShapeError(
                f"{type(self).__name__} cannot project a classic mx.nd.NDArray of shape {shape}: "
                f"MXNet's classic arrays read 0 and () as unknown shapes, so no operator runs on "
                f"them. Use an mx.np array (after mx.npx.set_np()) for empty and 0-d arrays.")
        if w.size == 0:
            return w.copy()
        legacy = (w.reshape(1) if not shape else w).as_nd_ndarray() if numpy_mode else w
        dtype = np.dtype(legacy.dtype)
        work = legacy.astype(np.float32) if dtype == np.float16 else legacy
        out = self.apply_to(work, reduction, boundary_rtol=BOUNDARY_RTOL[dtype])
        if out.dtype != dtype:
            out = out.astype(dtype)
        if not numpy_mode:
            return out
        result = out.as_np_ndarray()
        return result.reshape(()) if not shape else result

    def apply_to(self, w: NDArray, reduction: Optional[Reduction] = None,
                 boundary_rtol: float = 0.0) -> NDArray:
        """Project a classic NDArray already in the computation dtype: :meth:`project` with the
        reduction resolved by :meth:`reduction_for`.

        This is the step :meth:`__call__` performs after checking the array and converting kinds
        and dtypes; trainers call it on the float32 master copy of float16 weights.

        Parameters
        ----------
        w : mx.nd.NDArray
            The weight, float32 or float64. It is not modified.
        reduction : Reduction or None, default None
            As in :meth:`__call__`.
        boundary_rtol : float, default 0.0
            Relative distance from a bound within which a norm counts as on it.
        """
        return self.project(w, self.reduction_for(w.shape, reduction), boundary_rtol)

    def apply_with_state(self, w: NDArray, reduction: Optional[Reduction], state: Any) -> Tuple[NDArray, Any]:
        """:meth:`continue_from` on a classic NDArray of any floating dtype (float16 is computed
        in float32); return the projection in ``w``'s dtype and the new state.

        Parameters
        ----------
        w : mx.nd.NDArray
            The weight in its own shape. It is not modified.
        reduction : Reduction or None
            As in :meth:`__call__`.
        state : object or None
            What the last call returned for this copy, or None at the first.
        """
        dtype = np.dtype(w.dtype)
        work = w.astype(np.float32) if dtype == np.float16 else w
        out, state = self.continue_from(work, self.reduction_for(w.shape, reduction),
                                        BOUNDARY_RTOL[dtype], state)
        return out.astype(dtype, copy=False), state

    def reduction_for(self, shape: Sequence[int], default: Optional[Reduction] = None,
                      name: Optional[str] = None) -> Reduction:
        """Resolve the reduction this constraint uses on an array of ``shape``.

        An explicit ``axis`` wins; otherwise ``default`` (a layer's fan-in), otherwise every axis
        but 0.

        Parameters
        ----------
        shape : sequence of int
            Shape of the weight.
        default : Reduction or None, default None
            Per-output-unit reduction supplied by the layer that owns the weight.
        name : str or None, default None
            Parameter name to quote in the error message.

        Raises
        ------
        ConstraintShapeError
            If the explicit ``axis`` does not fit ``shape``.
        """
        if self.axis is not None:
            where = f"{type(self).__name__} axis {self.axis!r}"
            if name is not None:
                where += f" for parameter '{name}'"
            return Reduction(normalize_axes(self.axis, shape, where))
        return default if default is not None else per_output_unit(shape)

    def validate(self, shape: Sequence[int], default: Optional[Reduction] = None,
                 name: Optional[str] = None) -> None:
        """Check that this constraint can be applied to a weight of ``shape``.

        Takes the arguments of :meth:`reduction_for` and raises its ``ConstraintShapeError`` if
        the constraint's axes do not fit ``shape``, or :meth:`check_shape`'s.
        """
        self.check_shape(tuple(shape), self.reduction_for(shape, default, name), name)

    def uses_layer_layout(self) -> bool:
        """Whether the result depends on the owning layer's layout (``layered`` and ``axis=None``)."""
        return self.layered and self.axis is None

    @classmethod
    def from_config(cls: Type[_Built], config: Dict[str, Any]) -> _Built:
        """Build a constraint from the output of :meth:`get_config`.

        Parameters
        ----------
        config : dict
            Constructor arguments by name.

        Raises
        ------
        ConstraintArgumentError
            If ``config`` is not a dict or names an argument the constructor does not take.
        """
        if not isinstance(config, dict):
            raise ConstraintArgumentError(f"{cls.__name__} config must be a dict: got {config!r}.")
        accepted = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
        unknown = sorted(set(config) - set(accepted))
        if unknown:
            raise ConstraintArgumentError(
                f"{cls.__name__} config has unknown keys {unknown}: got {config!r}. Expected "
                f"keys: {', '.join(accepted) or '(none)'}.")
        return cls(**config)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self), json.dumps(self.get_config(), sort_keys=True)))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _projecting_views(project: Any) -> Any:
    """A ``project(w, axes, boundary_rtol)`` of the first contract (0.1: the weight viewed with
    the reduction's ``view_shape``, and its axes), as a :meth:`Constraint.project`: families
    written for it keep working."""

    @functools.wraps(project)
    def adapted(self: Constraint, w: NDArray, reduction: Reduction, boundary_rtol: float) -> NDArray:
        return project(self, viewed(w, reduction), reduction.axes, boundary_rtol).reshape(w.shape)

    return adapted


def check_array(w: Any, owner: str) -> None:
    """Refuse what a projection cannot take: non-arrays, sparse storage, non-floating dtypes.

    Raises
    ------
    ConstraintTypeError
        Naming ``owner``, what was given and what is expected.
    """
    if not isinstance(w, NDArray):
        raise ConstraintTypeError(
            f"{owner} expects an mx.nd.NDArray or mx.np.ndarray: got {type(w).__name__}.")
    if w.stype != "default":
        raise ConstraintTypeError(
            f"{owner} projects dense arrays: got storage type {w.stype!r} of shape "
            f"{tuple(w.shape)}. Convert it with .tostype('default').")
    check_dtype(w.dtype, owner, f"an array of shape {tuple(w.shape)}")


def check_dtype(dtype: Any, owner: str, what: str) -> None:
    """Refuse a dtype that is not float16, float32 or float64 (``what`` names the weight).

    Raises
    ------
    ConstraintTypeError
        For integer, boolean and other dtypes: rescaling them would truncate to zero.
    """
    if np.dtype(dtype) not in BOUNDARY_RTOL:
        raise ConstraintTypeError(
            f"{owner} got {what} with dtype {np.dtype(dtype).name}: constraints project "
            f"floating-point weights (float16, float32, float64); an integer weight would be "
            f"truncated (MaxNorm(2) would turn [[3, 4]] into [[0, 0]]).")


def real_argument(owner: str, argument: str, value: object) -> float:
    """Validate a real, finite constructor argument and return it as a float.

    Raises
    ------
    ConstraintTypeError
        If ``value`` is not a real number.
    ConstraintArgumentError
        If it is not finite (integers too large for a float included).
    """
    if isinstance(value, bool) or not isinstance(value, (Real, np.floating, np.integer)):
        raise ConstraintTypeError(
            f"{owner} {argument} must be a real number: got {value!r} of type {type(value).__name__}. "
            f"Pass a float such as {owner.split('(')[0]}({argument}=3.0).")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ConstraintArgumentError(f"{owner} {argument} must be finite: got {_shown(value)}.")
    return number


def _shown(value: object) -> str:
    """``repr(value)``, shortened for integers too long to read."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:12]}...{text[-6:]} ({len(text)} digits)"


def bound_argument(owner: str, argument: str, value: object, allow_zero: bool = False) -> float:
    """Validate a norm bound: finite, > 0 (or 0 if ``allow_zero``) and a normal float32 number.

    Weights are computed in float32 at least, so a bound outside float32's normal range
    ``[1.1754944e-38, 3.4028235e+38]`` cannot be compared with a norm.

    Raises
    ------
    ConstraintArgumentError
        Naming the constraint, the argument, the value and the allowed range.
    """
    number = real_argument(owner, argument, value)
    if number < 0.0 or (number == 0.0 and not allow_zero):
        raise ConstraintArgumentError(
            f"{owner} {argument} must be {'>= 0' if allow_zero else '> 0'}: got {value!r}.")
    low, high = _BOUND_RANGE
    if number != 0.0 and not low <= number <= high:
        raise ConstraintArgumentError(
            f"{owner} {argument} must lie in float32's normal range [{low:.8g}, {high:.8g}] "
            f"(weights are computed in float32 at least): got {value!r}.")
    return number


def axis_config(axis: Axis) -> Any:
    """The JSON form of an axis: None, an int or a list of ints."""
    return list(axis) if isinstance(axis, tuple) else axis


def _numpy_shapes() -> bool:
    """Whether MXNet's numpy shape semantics are on (``mx.npx.set_np()``): then () is a scalar
    and 0 an empty axis, for classic arrays too. Looked up at call time: servers import the
    catalogue before ``mxnet.util`` exists."""
    from mxnet.util import is_np_shape

    return bool(is_np_shape())


def _is_numpy_array(w: NDArray) -> bool:
    """Whether ``w`` is an ``mx.np.ndarray`` (checked without importing ``mxnet.numpy``)."""
    numpy_module = sys.modules.get("mxnet.numpy")
    return numpy_module is not None and isinstance(w, numpy_module.ndarray)
