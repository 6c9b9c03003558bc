"""Every access to MXNet's private attributes, in one place, for the MXNet it was written for.

gluon-constraints hooks into Gluon where no public API reaches: the trainer's kvstore set-up and
state loading, a parameter's allocation, a block's own parameters, a convolution's settings,
the optimizer's per-index bookkeeping, and the loaded C library (the kernels call its public C
API). Each such access is a function (or the hook mixin) here,
read against MXNet 1.9.1's sources; every other module uses only these and MXNet's public API.
Importing this module checks the installed MXNet version.

Like the catalogue, this module imports only ``mxnet`` itself at import time: parameter servers
import the package while ``import mxnet`` is still running. Gluon classes are looked up when a
function that needs them is called.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

from .errors import DependencyError

try:
    import mxnet
except ModuleNotFoundError as missing:
    if missing.name != "mxnet":
        raise
    raise DependencyError(
        "gluon-constraints needs MXNet 1.9.x, and no mxnet module is installed. Install the CPU "
        "build with pip install 'mxnet==1.9.1' 'numpy<1.24', or a GPU build matching your CUDA, "
        "e.g. pip install 'mxnet-cu112==1.9.1' 'numpy<1.24'.") from None

__all__ = ["SUPPORTED_MXNET", "TrainerHooks", "trainer_parameters", "install_optimizer",
           "replace_loaded_optimizer", "kvstore_of", "updates_on_kvstore", "kvstore_initialized",
           "kvstore_setting", "set_update_on_kvstore", "has_sparse_gradients", "is_distributed",
           "broadcast_initial_weights", "check_before_allocation", "has_fresh_gradient", "storage_type", "trainer_of",
           "is_allocated", "data_arrays", "data_shape", "own_parameters", "block_parameters",
           "BlockState", "block_state", "ParameterWalk", "same_objects",
           "structural_parameters",
           "convolution_settings", "layer_arguments", "child_blocks", "pooling_base", "convolution_base",
           "recurrent_layer_base", "optimizer_rates", "count_update", "update_count",
           "update_counts_by_device", "c_function"]

#: MXNet versions whose private attributes this module was checked against.
SUPPORTED_MXNET = ("1.9.",)

_version = getattr(mxnet, "__version__", "")
if not _version.startswith(SUPPORTED_MXNET):
    raise DependencyError(
        f"gluon-constraints supports MXNet 1.9.x (any build: mxnet, mxnet-cu112, mxnet-cu117, ...): "
        f"found mxnet {_version or '(unknown version)'}. Install a 1.9 build, e.g. "
        f"pip install 'mxnet==1.9.1' 'numpy<1.24' or 'mxnet-cu112==1.9.1' 'numpy<1.24'.")


# -- Trainer ------------------------------------------------------------------------------------
class TrainerHooks:
    """Mixin for a ``gluon.Trainer`` subclass: turns Trainer's private set-up steps into hooks.

    A subclass implements :meth:`before_kvstore` (runs just before the kvstore is created, at the
    first ``step``/``update``/``allreduce_grads``/``load_states``, when every shape is known),
    :meth:`after_kvstore` (just after), :meth:`after_load_states`, :meth:`before_pushes` and
    :meth:`between_pushes_and_pulls`.
    """

    def _init_kvstore(self) -> None:
        self.before_kvstore()
        super()._init_kvstore()  # type: ignore[misc]
        self.after_kvstore()

    def _allreduce_grads(self) -> None:
        """Gluon's, except with a local kvstore that updates (``update_on_kvstore``) where
        :meth:`pushes_all_then_pulls` says so: :meth:`before_pushes` runs, every parameter is
        pushed (the kvstore runs the optimizer in the pushing thread) in the order :meth:`ordered_for_pushes` gives,
        :meth:`between_pushes_and_pulls` runs, then every parameter is pulled.
        Gluon pushes and pulls each parameter in turn, which gives the same weights."""
        kvstore, params = self._kvstore, self._params  # type: ignore[attr-defined]
        if not (kvstore and self._update_on_kvstore and kvstore.type in ("device", "local")  # type: ignore[attr-defined]
                and self.pushes_all_then_pulls()):
            super()._allreduce_grads()  # type: ignore[misc]
            return
        updated = [(i, p) for i, p in enumerate(params) if p.grad_req != "null"]
        self.before_pushes()
        try:
            for i, param in self.ordered_for_pushes(updated):
                kvstore.push(i, param.list_grad(), priority=-i)
        finally:
            self.between_pushes_and_pulls()
        for i, param in updated:
            kvstore.pull(i, out=param.list_data(), priority=-i)

    def load_states(self, fname: str) -> None:
        """Load the trainer's states, as ``gluon.Trainer.load_states``, then :meth:`after_load_states`."""
        super().load_states(fname)  # type: ignore[misc]
        self.after_load_states()

    def before_kvstore(self) -> None:
        """Called before the kvstore is created."""

    def after_kvstore(self) -> None:
        """Called after the kvstore is created."""

    def after_load_states(self) -> None:
        """Called after ``load_states``."""

    def pushes_all_then_pulls(self) -> bool:
        """Whether a local kvstore that updates may take every push before any pull (with dense
        gradients); Gluon's own push-and-pull per parameter otherwise."""
        return False

    def before_pushes(self) -> None:
        """Called before a local kvstore that updates receives a step's gradients."""

    def ordered_for_pushes(self, updated: List[Tuple[int, Any]]) -> List[Tuple[int, Any]]:
        """The ``(index, parameter)`` pairs in the order a local kvstore that updates receives
        them (Gluon's: by index, which is by name)."""
        return updated

    def between_pushes_and_pulls(self) -> None:
        """Called after a local kvstore ran every update of a step, before any weight is pulled
        (also when a push raised)."""


def trainer_parameters(trainer: Any) -> List[Any]:
    """The trainer's parameters, in its index (kvstore key) order."""
    return trainer._params


def install_optimizer(trainer: Any, optimizer: Any) -> None:
    """Make ``optimizer`` the trainer's optimizer before its first step (updaters included)."""
    trainer._init_optimizer(optimizer, {})


def replace_loaded_optimizer(trainer: Any, optimizer: Any) -> None:
    """After ``load_states``: make ``optimizer`` the one every updater and the kvstore use."""
    trainer._optimizer = optimizer
    for updater in trainer._updaters:
        updater.optimizer = optimizer
    if trainer._kvstore and trainer._update_on_kvstore:
        trainer._kvstore._updater.optimizer = optimizer


def kvstore_of(trainer: Any) -> Optional[Any]:
    """The trainer's kvstore once created, else None."""
    return trainer._kvstore


def updates_on_kvstore(trainer: Any) -> bool:
    """Whether the update runs on the kvstore's copy (or the servers'), once the kvstore exists."""
    return bool(trainer._kvstore) and bool(trainer._update_on_kvstore)


def kvstore_initialized(trainer: Any) -> bool:
    """Whether the trainer has created its kvstore (first step, or ``load_states``)."""
    return bool(trainer._kv_initialized)


def kvstore_setting(trainer: Any) -> Tuple[Any, Optional[bool]]:
    """The ``kvstore`` and ``update_on_kvstore`` arguments the trainer was built with."""
    return trainer._kvstore_params["kvstore"], trainer._kvstore_params["update_on_kvstore"]


def set_update_on_kvstore(trainer: Any, value: bool) -> None:
    """Change the ``update_on_kvstore`` argument before the kvstore is created."""
    trainer._kvstore_params["update_on_kvstore"] = value


def has_sparse_gradients(trainer: Any) -> bool:
    """Whether a parameter of the trainer has row-sparse gradients."""
    return bool(trainer._contains_sparse_grad)


def is_distributed(trainer: Any) -> bool:
    """Whether the trainer's kvstore (once created) is a distributed one."""
    return bool(trainer._distributed)


def broadcast_initial_weights(trainer: Any) -> None:
    """Broadcast the initial weights through the kvstore now, then wait at a barrier."""
    trainer._init_params()
    mxnet.ndarray.waitall()
    trainer._kvstore._barrier()


# -- Parameter ----------------------------------------------------------------------------------
class _CheckBeforeAllocation:
    """Stands in for ``param._init_impl``: runs ``check(param, shape)``, then allocates.

    An object holding the parameter, not a closure: ``copy.deepcopy`` of a network copies it
    with the parameter, so the copy checks and allocates itself, never the original.
    """

    def __init__(self, param: Any, check: Callable[[Any, Tuple[int, ...]], None]) -> None:
        self.param = param
        self.check = check

    def __call__(self, data: Any, ctx_list: Any) -> None:
        self.check(self.param, tuple(data.shape))
        type(self.param)._init_impl(self.param, data, ctx_list)


def check_before_allocation(param: Any, check: Callable[[Any, Tuple[int, ...]], None]) -> None:
    """Run ``check(param, shape)`` whenever MXNet allocates ``param`` (deferred init included).

    The one method this package replaces on an instance. MXNet 1.9 offers no hook, event or
    callback when a parameter's shape becomes known and its arrays are allocated: every
    allocation, deferred initialization's included, goes through
    ``Parameter._init_impl(data, ctx_list)``, a method of the class. So the parameter gets an
    instance attribute of that name, a :class:`_CheckBeforeAllocation` that runs ``check``
    first and then the class's method: a check that raises leaves the parameter unallocated,
    and a constraint whose axes do not fit is refused before any value is written.
    ``check`` must be a module-level function (copies and pickles refer to it by name).
    Installing twice keeps one check.
    """
    installed = param.__dict__.get("_init_impl")
    if isinstance(installed, _CheckBeforeAllocation):
        installed.check = check
        return
    param._init_impl = _CheckBeforeAllocation(param, check)


def has_fresh_gradient(array: Any) -> bool:
    """Whether a backward pass wrote the gradient of a parameter's device copy ``array`` since
    the last update (what ``step(..., ignore_stale_grad=True)`` reads; no host sync)."""
    return bool(array._fresh_grad)


def storage_type(param: Any) -> str:
    """The parameter's weight storage type (``'default'``, ``'row_sparse'``)."""
    return param._stype


def trainer_of(param: Any) -> Optional[Any]:
    """The trainer the parameter is bound to, or None."""
    return param._trainer


def is_allocated(param: Any) -> bool:
    """Whether the parameter holds data (initialized, deferred initialization completed)."""
    return param._data is not None


def data_arrays(param: Any) -> Optional[List[Any]]:
    """The parameter's list of device copies (None until allocated). Gluon replaces the list
    whenever it reallocates the copies (``initialize``, ``reset_ctx``, ``cast``, loading into
    an uninitialized parameter) and writes into the arrays otherwise (``set_data``)."""
    return param._data


def data_shape(param: Any) -> Optional[Tuple[int, ...]]:
    """The parameter's shape: declared if fully known, else its data's, else None.

    ``SymbolBlock.imports`` leaves ``param.shape`` None even after loading and a forward pass,
    while the data has its real shape.
    """
    shape = param.shape
    if shape is not None and len(shape) > 0 and all(d is not None and d > 0 for d in shape):
        return tuple(shape)
    if param._data:
        return tuple(param._data[0].shape)
    return None


# -- Block --------------------------------------------------------------------------------------
def own_parameters(block: Any) -> Dict[str, Any]:
    """The parameters a block registered itself, by attribute name (``{"weight": param}``)."""
    return dict(block._reg_params)


class BlockState:
    """What this package keeps on a block, under ``block._gluon_constraints``.

    Not a list, tuple or dict, which Gluon's check for unregistered child blocks
    (``_check_container_with_block``) would search and warn about. A copy or pickle of the
    block gets None (``__reduce__``): everything here describes this block's own objects.

    Attributes
    ----------
    parameter_walk : ParameterWalk or None
        What :func:`block_parameters` last found under the block.
    projection : object or None
        ``apply_constraints``' prepared kernel work for the block's parameters.
    """

    __slots__ = ("parameter_walk", "projection")

    def __init__(self) -> None:
        self.parameter_walk: Optional[ParameterWalk] = None
        self.projection: Any = None

    def __reduce__(self) -> Tuple[Any, Tuple[()]]:
        return type(None), ()


#: The one attribute this package sets on a block.
BLOCK_STATE = "_gluon_constraints"


def block_state(block: Any) -> BlockState:
    """``block``'s :class:`BlockState` (an empty one, set on it, the first time or after a copy)."""
    state = block.__dict__.get(BLOCK_STATE)
    if state is None:
        state = block.__dict__[BLOCK_STATE] = BlockState()
    return state


class ParameterWalk(NamedTuple):
    """What :func:`block_parameters` found under a block: every visited block's parameter and
    child tables, each with its contents then, and the parameters found. It is valid while every
    table still holds the same objects (Gluon creates a block's tables once and only adds to,
    or replaces in, them)."""

    tables: Tuple[Tuple[Any, Tuple[Any, ...]], ...]
    parameters: Tuple[Any, ...]


def block_parameters(block: Any) -> List[Any]:
    """``block.collect_params().values()``, in the same order, without building a ParameterDict
    per block (which costs tens of microseconds per block).

    The walk is kept on the block and reused while no table it read has changed (checking them
    costs about a third of walking again). Blocks whose class overrides ``collect_params``, and
    names that occur twice (a shared parameter, or two parameters of one name), are left to
    ``collect_params`` itself (which keeps a shared one once and raises on a clash).
    """
    state = block_state(block)
    kept = state.parameter_walk
    if kept is not None and _unchanged(kept.tables):
        return list(kept.parameters)
    state.parameter_walk = walk = _walk(block)
    return list(block.collect_params().values() if walk is None else walk.parameters)


def same_objects(now: Any, kept: Any) -> bool:
    """Whether the sized iterable ``now`` holds exactly the objects of ``kept``, in order (by
    identity: what a kept record was made from is unchanged)."""
    return len(now) == len(kept) and all(map(operator.is_, now, kept))


def _unchanged(tables: Tuple[Tuple[Any, Tuple[Any, ...]], ...]) -> bool:
    """Whether every table still holds exactly ``contents``."""
    for table, contents in tables:
        if contents:
            if not same_objects(table.values(), contents):
                return False
        elif table:  # most tables are empty
            return False
    return True


def _walk(block: Any) -> Optional[ParameterWalk]:
    """The parameters under ``block`` in ``collect_params`` order with the tables read, or None
    where ``collect_params`` itself must decide (see :func:`block_parameters`)."""
    from mxnet.gluon.block import Block

    found: Dict[str, Any] = {}
    tables: List[Tuple[Any, Tuple[Any, ...]]] = []
    pending = [block]
    while pending:
        b = pending.pop()
        if type(b).collect_params is not Block.collect_params:
            return None
        params, children = b._params._params, b._children
        tables += [(params, tuple(params.values())), (children, tuple(children.values()))]
        found.update(params)
        pending.extend(reversed(tables[-1][1]))
    parameters = tuple(found.values())
    if len(parameters) != sum(len(contents) for table, contents in tables[::2]):
        return None
    return ParameterWalk(tuple(tables), parameters)


def structural_parameters(block: Any) -> Dict[str, Any]:
    """Parameters by structural name (``"0.weight"``), as ``Block.save_parameters`` names them."""
    return block._collect_params_with_prefix()


def convolution_settings(block: Any) -> Tuple[bool, int, str]:
    """``(transposed, groups, layout)`` of a Gluon convolution block."""
    return (block._op_name == "Deconvolution", int(block._kwargs["num_group"]),
            str(block._kwargs["layout"]))


def layer_arguments(block: Any) -> Dict[str, Any]:
    """The operator arguments a Gluon convolution, pooling or normalisation block passes
    (``kernel``, ``stride``, ``dilate``, ``pad``, ``num_group``, ``layout``, ``eps``,
    ``fix_gamma``, ``count_include_pad``, ``global_pool`` ...: MXNet's names), ``slope``, the
    ``alpha`` of a LeakyReLU or ELU block, and ``act_type``, an Activation block's function."""
    arguments = dict(getattr(block, "_kwargs", {}))
    if hasattr(block, "_alpha"):
        arguments["slope"] = block._alpha
    if hasattr(block, "_act_type"):
        arguments["act_type"] = block._act_type
    return arguments


def child_blocks(block: Any) -> List[Any]:
    """A block's child blocks, in the order they were registered (a Sequential's order)."""
    return list(block._children.values())


def pooling_base() -> type:
    """The base class of every Gluon pooling block (max, average, global)."""
    from mxnet.gluon.nn import conv_layers

    return conv_layers._Pooling


def convolution_base() -> type:
    """The base class of every Gluon convolution block."""
    from mxnet.gluon.nn import conv_layers

    return conv_layers._Conv


def recurrent_layer_base() -> type:
    """The base class of Gluon's fused recurrent layers (RNN, LSTM, GRU)."""
    from mxnet.gluon.rnn import rnn_layer

    return rnn_layer._RNNLayer


# -- Optimizer ----------------------------------------------------------------------------------
def optimizer_rates(optimizer: Any, indices: List[Any]) -> Iterator[Tuple[float, float]]:
    """``(learning rate, weight decay)`` of each index, multipliers and schedules applied."""
    return zip(optimizer._get_lrs(indices), optimizer._get_wds(indices))


def count_update(optimizer: Any, indices: List[Any]) -> None:
    """Advance the optimizer's update counts for ``indices``, as its own update would."""
    optimizer._update_count(indices)


def update_counts_by_device(optimizer: Any) -> List[Dict[Any, int]]:
    """The optimizer's update counts, one ``{index: count}`` table per device it updated on
    (MXNet counts per device; ``num_update`` is the largest count of any)."""
    return list(optimizer._all_index_update_counts.values())


def update_count(optimizer: Any, index: Any, device_id: Optional[int] = None) -> int:
    """How many updates ``index`` has had on device ``device_id`` (None: the optimizer's current
    one), ``begin_num_update`` if none."""
    counts = optimizer._index_update_count if device_id is None \
        else optimizer._all_index_update_counts.get(device_id, {})
    return counts.get(index, optimizer.begin_num_update)


# -- C API --------------------------------------------------------------------------------------
def c_function(name: str) -> Any:
    """The address of MXNet's C API function ``name`` (``ctypes.c_void_p``), from the library
    mxnet loaded."""
    import ctypes

    from mxnet.base import _LIB

    return ctypes.cast(getattr(_LIB, name), ctypes.c_void_p)
