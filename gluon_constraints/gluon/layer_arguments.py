"""The ``*_constraint=`` keyword arguments shared by the drop-in layer modules.

:func:`constrained_layer` builds each drop-in class (``nn.Dense``, ``rnn.LSTM``, ...): a subclass
of the Gluon layer with the :class:`ConstraintArguments` mixin, named, documented and importable
like a class written out by hand.
"""

from __future__ import annotations

import fnmatch
import inspect
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from .. import _mxnet_compat as compat
from ..catalogue import get
from ..errors import ConstraintConfigError, ConstraintTypeError
from .attachment import attach, constraint_of

__all__ = ["ConstraintArguments", "constrained_layer"]


class ConstraintArguments:
    """Mixin giving a Gluon layer ``<group>_constraint=`` keyword arguments.

    A subclass lists in ``constraint_groups`` each keyword group and the shell-style patterns of
    the parameter attributes it applies to, e.g. ``{"weight": ("weight",), "bias": ("bias",)}``.
    Shorthand keywords (``shorthands``) set several groups at once. A Keras keyword
    (``kernel_constraint``, ...) is refused with a ``ConstraintTypeError`` naming this layer's keyword for
    it (``keras_names``), because a Keras constraint's explicit axes refer to Keras's layout.
    """

    constraint_groups: Mapping[str, Tuple[str, ...]] = {}
    shorthands: Mapping[str, Tuple[str, ...]] = {}
    keras_names: Mapping[str, str] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        chosen = _pop_constraints(type(self), kwargs)
        super().__init__(*args, **kwargs)
        for group, constraint in chosen.items():
            targets = _matching_params(self, self.constraint_groups[group])
            if not targets:
                raise ConstraintConfigError(
                    f"{type(self).__name__} got {group}_constraint={constraint!r} but has no "
                    f"{group.replace('_', ' ')} parameter (was it built with use_bias=False?).")
            for attr, param in targets:
                attach(param, constraint, layer=self)

    def __repr__(self) -> str:
        text = super().__repr__()
        extras = []
        for group, patterns in self.constraint_groups.items():
            found = {repr(constraint_of(p)) for _, p in _matching_params(self, patterns)
                     if constraint_of(p) is not None}
            if found:
                extras.append(f"{group}_constraint={' | '.join(sorted(found))}")
        if not extras or not text.endswith(")"):
            return text
        return f"{text[:-1]}, {', '.join(extras)})"


def constrained_layer(base: type, module: str, groups: Mapping[str, Tuple[str, ...]],
                      arguments_doc: str,
                      shorthands: Optional[Mapping[str, Tuple[str, ...]]] = None,
                      keras_names: Optional[Mapping[str, str]] = None) -> type:
    """A subclass of the Gluon layer ``base`` that takes ``<group>_constraint=`` arguments.

    Parameters
    ----------
    base : type
        The Gluon layer class (``mxnet.gluon.nn.Dense``).
    module : str
        The module the class is defined in (its ``__module__``, for pickling and ``help``).
    groups : mapping
        Keyword group to the shell-style patterns of the parameter attributes it constrains.
    arguments_doc : str
        The numpy-style text documenting the new arguments, appended to ``base``'s docstring.
    shorthands : mapping or None, default None
        Shorthand keyword to the groups it sets (``"weight": ("i2h_weight", "h2h_weight")``).
    keras_names : mapping or None, default None
        Keras keyword to this layer's keyword (``"kernel_constraint": "weight_constraint"``),
        quoted in the error a Keras keyword gets.
    """
    shorthands = dict(shorthands or {})
    cls = type(base.__name__, (ConstraintArguments, base), {
        "__module__": module, "__qualname__": base.__name__,
        "constraint_groups": dict(groups), "shorthands": shorthands,
        "keras_names": dict(keras_names or {}),
        "__doc__": (base.__doc__ or "").rstrip() + "\n\n    Constraints (gluon-constraints)\n"
                   "    -------------------------------\n    " + arguments_doc.strip() + "\n"})
    _extend_signature(cls, base, list(shorthands) + list(groups))
    return cls


def _extend_signature(cls: type, base: type, keywords: Sequence[str]) -> None:
    """Give ``cls`` the signature of ``base`` plus keyword-only ``<k>_constraint=None`` arguments."""
    signature = inspect.signature(base)
    params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    var_kw = [p for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD]
    added = [inspect.Parameter(f"{k}_constraint", inspect.Parameter.KEYWORD_ONLY, default=None)
             for k in keywords]
    cls.__signature__ = signature.replace(parameters=params + added + var_kw)  # type: ignore[attr-defined]


def _pop_constraints(cls: type, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Take the constraint keywords out of ``kwargs``, resolving shorthands, before building."""
    for keras in sorted(set(kwargs) & set(_KERAS_KEYWORDS)):
        ours = cls.keras_names.get(keras)  # type: ignore[attr-defined]
        instead = (f"use {ours}=" if ours else
                   f"{cls.__name__} has no such weight ({_KERAS_KEYWORDS[keras]})")
        raise ConstraintTypeError(
            f"{cls.__name__} got {keras}= (Keras's name): {instead}. Keras constraints' explicit "
            f"axes refer to Keras's weight layout, so do not copy them: leave axis=None (per "
            f"output unit in Gluon's layout) or translate with gc.from_keras(constraint, layer).")
    chosen: Dict[str, Any] = {}
    for shorthand, groups in cls.shorthands.items():  # type: ignore[attr-defined]
        value = get(kwargs.pop(f"{shorthand}_constraint", None))
        if value is not None:
            for group in groups:
                chosen[group] = value
    for group in cls.constraint_groups:  # type: ignore[attr-defined]
        key = f"{group}_constraint"
        if key not in kwargs:
            continue
        value = get(kwargs.pop(key))
        if value is None:
            continue
        if group in chosen:
            shorthand = next(s for s, gs in cls.shorthands.items() if group in gs)  # type: ignore[attr-defined]
            raise ConstraintConfigError(
                f"{cls.__name__} got both {shorthand}_constraint and {key}: pass one of them.")
        chosen[group] = value
    return chosen


# Keras's constraint keywords, with what they constrain.
_KERAS_KEYWORDS = {
    "kernel_constraint": "the kernel",
    "recurrent_constraint": "the recurrent kernel",
    "embeddings_constraint": "the embedding matrix",
    "depthwise_constraint": "a depthwise kernel: in Gluon a depthwise convolution is "
                            "Conv2D(groups=in_channels), constrained with weight_constraint=",
    "pointwise_constraint": "a pointwise kernel: in Gluon that is a separate Conv2D with "
                            "kernel_size=1, constrained with weight_constraint=",
}


def _matching_params(block: Any, patterns: Tuple[str, ...]):
    return [(attr, p) for attr, p in compat.own_parameters(block).items()
            if any(fnmatch.fnmatchcase(attr, pat) for pat in patterns)]
