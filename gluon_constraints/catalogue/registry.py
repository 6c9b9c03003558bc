"""Names of constraints: registration where each family is defined, lookup by name,
serialization.

Every registered class is known by its class name and by its snake_case alias (``MaxNorm`` and
``max_norm``). A family registers itself where it is defined, with ``@register_constraint``; the
catalogue imports every module of its package, so a new module's families are registered, named
in the package's public API (:func:`public_names`) and listed in the API reference without a line
anywhere else. This module imports no family: ``get`` builds compositions through the registered
``Compose`` class.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Callable, Dict, Optional, Type, TypeVar, Union, overload

from ..errors import ConstraintConfigError, ConstraintTypeError, UnknownConstraintError
from .base import Constraint
from .function import Function

__all__ = ["get", "serialize", "deserialize", "register_constraint", "registered_constraints", "public_names"]

C = TypeVar("C", bound=Type[Constraint])

_BY_NAME: Dict[str, Type[Constraint]] = {}
# Classes whose snake_case alias is also a module attribute of the package, as in Keras.
_KERAS_ALIASED: Dict[str, Type[Constraint]] = {}


@overload
def register_constraint(cls: C, *, keras_alias: bool = False) -> C: ...
@overload
def register_constraint(cls: None = None, *, keras_alias: bool = False) -> Callable[[C], C]: ...


def register_constraint(cls: Optional[C] = None, *, keras_alias: bool = False) -> Union[C, Callable[[C], C]]:
    """Register a :class:`Constraint` subclass under its class name and snake_case alias.

    Use it as a class decorator (``@register_constraint``) so that :func:`get` and
    :func:`deserialize` can build the class from its name or serialized form. Registering the
    same class twice is harmless.

    Parameters
    ----------
    cls : type
        A subclass of :class:`Constraint`.
    keras_alias : bool, default False
        Also make the snake_case alias a name of the package (``gc.max_norm``), as Keras does
        for its own constraints; for the package's families (``@register_constraint(keras_alias=True)``).

    Returns
    -------
    type
        ``cls`` itself (or, without ``cls``, the decorator).

    Raises
    ------
    ConstraintTypeError
        If ``cls`` is not a subclass of :class:`Constraint`.
    ConstraintConfigError
        If one of its names is already taken by a different class.
    """
    if cls is None:
        return lambda given: register_constraint(given, keras_alias=keras_alias)
    if not (isinstance(cls, type) and issubclass(cls, Constraint)):
        raise ConstraintTypeError(
            f"register_constraint expects a subclass of gluon_constraints.Constraint: got {cls!r}. "
            f"Define the class as class MyConstraint(gc.Constraint) and decorate it.")
    names = (cls.__name__, _snake_case(cls.__name__))
    for name in names:
        taken = _BY_NAME.get(name)
        if taken is not None and taken is not cls:
            raise ConstraintConfigError(
                f"Constraint name '{name}' is already registered for "
                f"{taken.__module__}.{taken.__qualname__}: cannot register "
                f"{cls.__module__}.{cls.__qualname__} under it. Rename the class.")
    for name in names:
        _BY_NAME[name] = cls
    if keras_alias:
        _KERAS_ALIASED[names[1]] = cls
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


def public_names(package: str) -> Dict[str, Any]:
    """The names the package ``package`` gives its registered families: each class defined in
    it (the base class aside) by its class name, and the Keras aliases (``max_norm``) of those registered with
    ``keras_alias=True``."""
    own = {name: cls for name, cls in registered_constraints().items()
           if cls.__module__.startswith(f"{package}.") and cls is not Constraint}
    return {**own, **{alias: cls for alias, cls in sorted(_KERAS_ALIASED.items()) if cls in own.values()}}


def serialize(constraint: Constraint) -> Dict[str, Any]:
    """Return ``{"class_name": ..., "config": ...}`` for a constraint.

    Parameters
    ----------
    constraint : Constraint
        Any registered constraint.

    Raises
    ------
    ConstraintTypeError
        If ``constraint`` is not a :class:`Constraint`.
    """
    if not isinstance(constraint, Constraint):
        raise ConstraintTypeError(
            f"serialize expects a Constraint: got {constraint!r} of type {type(constraint).__name__}. "
            f"Build one with gc.get(...) first.")
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
    ConstraintTypeError
        If ``data`` is not such a dict.
    """
    if not isinstance(data, dict) or not isinstance(data.get("class_name"), str):
        raise ConstraintTypeError(
            f"deserialize expects a dict with a 'class_name' string, as gc.serialize writes "
            f"({{'class_name': 'MaxNorm', 'config': {{'max_value': 3.0}}}}): got {data!r}.")
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
    ConstraintTypeError
        If ``identifier`` is none of the above.
    """
    if identifier is None or isinstance(identifier, Constraint):
        return identifier
    if isinstance(identifier, str):
        return _lookup(identifier)()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, (list, tuple)):
        compose: Callable[..., Constraint] = _lookup("Compose")  # Compose(constraints)
        return compose(identifier)
    if isinstance(identifier, type) and issubclass(identifier, Constraint):
        return identifier()
    if callable(identifier) and not isinstance(identifier, type):
        return Function(identifier)
    raise ConstraintTypeError(
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


register_constraint(Constraint)
