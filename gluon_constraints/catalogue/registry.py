"""Names of constraints: lookup by name, serialization, and registration of custom classes.

Every registered class is known by its class name and by its snake_case alias
(``MaxNorm`` and ``max_norm``).
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Dict, Optional, Type, TypeVar

from .base import Constraint
from .box import Clip
from .compose import Compose
from .elementwise import NonNeg
from .function import Function
from .norms import MaxNorm, MinMaxNorm, UnitNorm
from .orthogonal import Orthogonal
from .radial import RadialConstraint
from .schedule import Scheduled
from .simplex import L1Ball, Simplex
from .spectral import SpectralNorm
from ..errors import UnknownConstraintError

__all__ = ["get", "serialize", "deserialize", "register_constraint", "registered_constraints"]

C = TypeVar("C", bound=Type[Constraint])

_BY_NAME: Dict[str, Type[Constraint]] = {}


def register_constraint(cls: C) -> C:
    """Register a :class:`Constraint` subclass under its class name and snake_case alias.

    Use it as a class decorator so that :func:`get` and :func:`deserialize` can build the class
    from its name or serialized form. Registering the same class twice is harmless.

    Parameters
    ----------
    cls : type
        A subclass of :class:`Constraint`.

    Returns
    -------
    type
        ``cls`` itself.

    Raises
    ------
    TypeError
        If ``cls`` is not a subclass of :class:`Constraint`.
    ValueError
        If one of its names is already taken by a different class.
    """
    if not (isinstance(cls, type) and issubclass(cls, Constraint)):
        raise TypeError(
            f"register_constraint expects a subclass of gluon_constraints.Constraint: got {cls!r}.")
    names = (cls.__name__, _snake_case(cls.__name__))
    for name in names:
        taken = _BY_NAME.get(name)
        if taken is not None and taken is not cls:
            raise ValueError(
                f"Constraint name '{name}' is already registered for "
                f"{taken.__module__}.{taken.__qualname__}: cannot register "
                f"{cls.__module__}.{cls.__qualname__} under it.")
    for name in names:
        _BY_NAME[name] = cls
    return cls


def registered_constraints() -> Dict[str, Type[Constraint]]:
    """Every registered constraint class by its class name (aliases left out).

    Returns
    -------
    dict
        ``{"MaxNorm": MaxNorm, ...}``: the built-in families and those registered with
        :func:`register_constraint`.
    """
    return {name: cls for name, cls in sorted(_BY_NAME.items()) if name == cls.__name__}


def serialize(constraint: Constraint) -> Dict[str, Any]:
    """Return ``{"class_name": ..., "config": ...}`` for a constraint.

    Parameters
    ----------
    constraint : Constraint
        Any registered constraint.

    Raises
    ------
    TypeError
        If ``constraint`` is not a :class:`Constraint`.
    """
    if not isinstance(constraint, Constraint):
        raise TypeError(f"serialize expects a Constraint: got {constraint!r}.")
    return {"class_name": type(constraint).__name__, "config": constraint.get_config()}


def deserialize(data: Dict[str, Any]) -> Constraint:
    """Build a constraint from the output of :func:`serialize`.

    Parameters
    ----------
    data : dict
        ``{"class_name": name, "config": constructor arguments}``; ``config`` may be omitted.

    Raises
    ------
    UnknownConstraintError
        If the class name is not registered.
    ConstraintArgumentError
        If the config does not fit the class (unknown keys, Compose without members).
    TypeError
        If ``data`` is not such a dict.
    """
    if not isinstance(data, dict) or not isinstance(data.get("class_name"), str):
        raise TypeError(
            f"deserialize expects a dict with a 'class_name' string: got {data!r}.")
    cls = _lookup(data["class_name"])
    config = data.get("config")
    return cls.from_config({} if config is None else config)


def get(identifier: Any) -> Optional[Constraint]:
    """Turn anything that names a constraint into a :class:`Constraint`.

    Parameters
    ----------
    identifier : Constraint, None, str, dict, list, tuple, Constraint class or function
        A constraint (returned as is), None (returned as is), a registered class name or alias
        (built with default arguments), a serialized dict, a list or tuple of any of these
        (composed left to right into a :class:`Compose`), a Constraint subclass (built with
        default arguments), or a plain function ``w -> w`` (wrapped in a :class:`Function`,
        which cannot be serialized), as Keras's ``get`` accepts.

    Raises
    ------
    UnknownConstraintError
        If a name is not registered; the message lists the known names.
    TypeError
        If ``identifier`` is none of the above.
    """
    if identifier is None or isinstance(identifier, Constraint):
        return identifier
    if isinstance(identifier, str):
        return _lookup(identifier)()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, (list, tuple)):
        return Compose(identifier)
    if isinstance(identifier, type) and issubclass(identifier, Constraint):
        return identifier()
    if callable(identifier) and not isinstance(identifier, type):
        return Function(identifier)
    raise TypeError(
        f"Expected a constraint (a Constraint, a name, a serialized dict, a list of those, a "
        f"Constraint class, a function w -> w, or None): got {identifier!r} of type "
        f"{type(identifier).__name__}.")


def _lookup(name: str) -> Type[Constraint]:
    try:
        return _BY_NAME[name]
    except KeyError:
        pass
    known = sorted(_BY_NAME)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UnknownConstraintError(
        f"Unknown constraint name {name!r}.{hint} Known names: {', '.join(known)}.")


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# One line per built-in family.
register_constraint(Constraint)
register_constraint(MaxNorm)
register_constraint(MinMaxNorm)
register_constraint(UnitNorm)
register_constraint(NonNeg)
register_constraint(RadialConstraint)
register_constraint(Compose)
register_constraint(Clip)
register_constraint(Simplex)
register_constraint(L1Ball)
register_constraint(SpectralNorm)
register_constraint(Orthogonal)
register_constraint(Scheduled)
