"""Module paths of gluon-constraints 0.1.0 that files still name, and where those names live now.

Saved optimizer states (``Trainer.save_states``) and the optimizer that kvstore servers receive
are pickles, which name each class by module path; files written by 0.1.0 name three modules
that no longer exist. Those modules are answered from :data:`MOVED` by an import finder
installed when the package is imported, so the files load with pickle's own lookup (MXNet
unpickles them itself; no unpickler of ours is involved). A moved module is an empty module
whose names resolve through the table on first use: nothing is imported before a file needs it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any, Dict, Optional, Sequence

__all__ = ["MOVED"]

#: ``{old module: {name: "new.module:name"}}`` for every name 0.1.0's files refer to.
MOVED: Dict[str, Dict[str, str]] = {
    "gluon_constraints.constraints": {
        name: f"gluon_constraints.catalogue:{name}"
        for name in ("Constraint", "MaxNorm", "MinMaxNorm", "UnitNorm", "NonNeg", "Compose", "BOUNDARY_RTOL")},
    "gluon_constraints.optimizer": {
        "ConstrainedOptimizer": "gluon_constraints.training.optimizer:ConstrainedOptimizer",
        "Projection": "gluon_constraints.training.optimizer:Projection",
        "master_copy_slot": "gluon_constraints.training.optimizer:master_copy_slot"},
    "gluon_constraints.reduction": {"Reduction": "gluon_constraints.catalogue.reduction:Reduction"},
}


class _MovedModule(types.ModuleType):
    """An old module: each name is looked up in :data:`MOVED` when first read."""

    def __getattr__(self, name: str) -> Any:
        target = MOVED[self.__name__].get(name)
        if target is None:
            raise AttributeError(
                f"module {self.__name__!r} (a module of gluon-constraints 0.1.0) has no attribute "
                f"{name!r}; its names live on in: {sorted(MOVED[self.__name__])}")
        module, attribute = target.split(":")
        return getattr(importlib.import_module(module), attribute)


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and loads the modules of :data:`MOVED` (and nothing else)."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None,
                  target: Optional[types.ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _MovedModule(spec.name)
        module.__doc__ = f"Names of gluon-constraints 0.1.0's {spec.name}, now elsewhere (see _moved.MOVED)."
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: names resolve on first use."""


if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedFinder())
