"""``gc.lipschitz_bound``: an upper bound on a network's L2 Lipschitz constant, layer by layer.

A network's Lipschitz constant is at most the product of its layers' along a chain, and a
residual sum's is at most the sum of its branches' (``||f(x) + g(x) - f(y) - g(y)|| <= (L_f +
L_g) ||x - y||``). Each layer's constant comes from a rule for its type (:data:`RULES`, extended
with :func:`register_lipschitz`): exact for Dense weights (their largest singular value) and for
circular convolutions, an upper bound elsewhere (zero padding, strides, pooling, activations).
Blocks are walked in the order they compute, with a zero input of the given shape (inference
mode: Dropout is the identity, BatchNorm uses its running statistics), so every layer sees the
size of its own input, which the exact convolution norms need.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from mxnet import autograd, gluon
from mxnet import ndarray as nd

from .. import _mxnet_compat as compat
from ..catalogue.host import host_copy
from ..catalogue.operator_norm import OperatorNorm
from ..catalogue.spectrum import conv_operator_norm, dense_operator_norm, zero_padded_embedding
from ..errors import CertificationError
from ..gluon.attachment import constraint_of

__all__ = ["LayerBound", "NetworkBound", "lipschitz_bound", "register_lipschitz", "RULES", "ACTIVATIONS"]


class LayerBound(NamedTuple):
    """One layer's part of a network's bound: its block's name, what was computed, the
    constant, and whether it is the layer's exact Lipschitz constant (else an upper bound)."""

    name: str
    kind: str
    bound: float
    exact: bool


class NetworkBound(NamedTuple):
    """An upper bound on a network's L2 Lipschitz constant, and the layers it was built from (in
    the order they compute; residual blocks add their own rows after their branches')."""

    bound: float
    layers: List[LayerBound]


def _gelu_slope() -> float:
    """The largest slope of GELU, x * Phi(x): Phi + x * phi peaks at x = sqrt(2)."""
    x = math.sqrt(2.0)
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0))) + x * math.exp(-x * x / 2.0) / math.sqrt(2.0 * math.pi)


def _swish_slope() -> float:
    """The largest slope of Swish, x * sigmoid(x) (any beta > 0 scales x only): found on a fine
    grid around its peak near x = 2.4 and rounded up."""
    x = np.linspace(2.0, 3.0, 100001)
    s = 1.0 / (1.0 + np.exp(-x))
    return float((s + x * s * (1.0 - s)).max()) + 1e-9


#: Lipschitz constants of MXNet's activation functions (``act_type`` names): ReLU 1, the
#: sigmoid 1/4 (its largest slope), tanh, softrelu (softplus) and softsign 1, GELU about 1.1289
#: (``Phi(x) + x phi(x)`` at ``sqrt(2)``), Swish about 1.0998, SELU ``1.0507 * 1.6733``.
ACTIVATIONS: Dict[str, float] = {"relu": 1.0, "sigmoid": 0.25, "tanh": 1.0, "softrelu": 1.0, "softsign": 1.0,
                                 "gelu": _gelu_slope(), "swish": _swish_slope(),
                                 "selu": 1.0507009873554805 * 1.6732632423543772}

Rule = Callable[[Any, Any, "Walk"], Tuple[float, Any]]
#: The rule of each block type: ``rule(block, x, walk) -> (bound, output)``, where ``x`` is the
#: block's (zero) input and ``walk`` records layers and bounds sub-blocks (:meth:`Walk.bound`).
RULES: Dict[type, Rule] = {}


def register_lipschitz(block_class: type, rule: Rule) -> None:
    """Teach :func:`lipschitz_bound` a block type (your own blocks, or residual blocks it does
    not know).

    Parameters
    ----------
    block_class : type
        The Gluon block class (its subclasses use the rule too, unless they have their own).
    rule : callable
        ``rule(block, x, walk) -> (bound, output)``: an upper bound on the block's L2 Lipschitz
        constant and its output for input ``x``. Bound sub-blocks with ``walk.bound(child, x)``,
        which returns ``(bound, output)`` too; record a layer with ``walk.record(block, kind,
        bound, exact)``.

    Examples
    --------
    >>> class Residual(mx.gluon.HybridBlock):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.body = mx.gluon.nn.Dense(4, in_units=4)
    ...     def hybrid_forward(self, F, x):
    ...         return x + self.body(x)
    >>> gc.register_lipschitz(Residual, lambda block, x, walk: (
    ...     1.0 + walk.bound(block.body, x)[0], block(x)))
    >>> net = Residual()
    >>> net.initialize(mx.init.Constant(0.5))      # body: 4 x 4 of 0.5, norm 2
    >>> round(gc.lipschitz_bound(net, (1, 4)).bound, 6)
    3.0
    """
    if not isinstance(block_class, type) or not callable(rule):
        raise CertificationError(
            f"register_lipschitz takes a block class and a callable rule: got {block_class!r} and {rule!r}.")
    RULES[block_class] = rule


class Walk:
    """The state of one :func:`lipschitz_bound` call: the layers recorded so far."""

    def __init__(self) -> None:
        self.layers: List[LayerBound] = []

    def record(self, block: Any, kind: str, bound: float, exact: bool) -> float:
        """Add a layer's row to the breakdown; return ``bound``."""
        self.layers.append(LayerBound(block.name, kind, float(bound), bool(exact)))
        return float(bound)

    def bound(self, block: Any, x: Any) -> Tuple[float, Any]:
        """An upper bound on ``block``'s Lipschitz constant, and its output for ``x``."""
        for kind in type(block).__mro__:
            rule = RULES.get(kind)
            if rule is not None:
                _check_same_computation(block, kind)
                return rule(block, x, self)
        raise CertificationError(
            f"gluon-constraints cannot bound block '{block.name}' of type {type(block).__name__}: it "
            f"knows Gluon's layers, sequences and the model zoo's residual blocks. Teach it with "
            f"gc.register_lipschitz({type(block).__name__}, rule) (docs/certification.md).")

    def chain(self, blocks: Sequence[Any], x: Any) -> Tuple[float, Any]:
        """The product of ``blocks``' bounds, applied one after another."""
        total = 1.0
        for child in blocks:
            bound, x = self.bound(child, x)
            total *= bound
        return total, x


def _check_same_computation(block: Any, kind: type) -> None:
    """Refuse a subclass of a known block type that computes something else: a rule bounds what
    its own class computes, so it applies to a subclass only if that keeps ``forward`` and
    ``hybrid_forward``."""
    changed = [name for name in ("forward", "hybrid_forward")
               if getattr(type(block), name, None) is not getattr(kind, name, None)]
    if changed:
        raise CertificationError(
            f"gluon-constraints cannot bound block '{block.name}' of type {type(block).__name__}: it "
            f"subclasses {kind.__name__} but overrides {' and '.join(changed)}, so {kind.__name__}'s bound "
            f"may not hold for it. Teach it with gc.register_lipschitz({type(block).__name__}, rule) "
            f"(docs/certification.md).")


def lipschitz_bound(net: Any, input_shape: Sequence[int], ctx: Any = None) -> NetworkBound:
    """An upper bound on the L2 Lipschitz constant of ``net`` (in inference mode).

    ``||net(x) - net(y)|| <= bound * ||x - y||`` for all inputs ``x``, ``y`` of ``input_shape``
    (the norms over each example's entries). Per layer: Dense weights by their largest singular
    value, convolutions and transposed convolutions (their adjoint) by the exact operator norm of
    the circular convolution on the smallest circle that contains the zero-padded, strided one
    (``zero_padded_embedding``, ``conv_operator_norm``; an ``OperatorNorm``'s own circle for a
    weight it constrains), activations by
    their largest slope (:data:`ACTIVATIONS`; LeakyReLU and ELU ``max(1, |alpha|)``, PReLU
    ``max(1, max |alpha|)``), max pooling by ``sqrt(prod ceil(k / s))`` (each input lies in that
    many windows at most) and average pooling by ``sqrt(prod ceil(k / s) / prod k)``, global
    average pooling ``1 / sqrt(positions)``, BatchNorm by ``max |gamma| / sqrt(running_var +
    eps)``, Flatten, Dropout and Identity 1, a concatenation of branches (``HybridConcurrent``)
    by ``sqrt(sum L_i^2)``, a residual block by the sum of its branches. Sequences multiply.

    Parameters
    ----------
    net : Block
        An initialized network: ``HybridSequential``/``Sequential`` nests of the layers above,
        the model zoo's ResNet (V1 and V2, basic and bottleneck blocks), VGG and AlexNet, and
        blocks registered with :func:`register_lipschitz`.
    input_shape : sequence of int
        The shape of one batch of input, e.g. ``(1, 3, 32, 32)``.
    ctx : Context or None
        Where to run the walk's forward pass (None: the context of the network's first parameter).

    Returns
    -------
    NetworkBound
        ``bound`` and the per-layer breakdown ``layers``.

    Raises
    ------
    CertificationError
        Naming the first block it cannot bound (an Embedding, a LayerNorm, an unknown block).
    """
    params = list(net.collect_params().values())
    if ctx is None:
        ctx = params[0].list_ctx()[0] if params else None
    x = nd.zeros(tuple(input_shape), ctx=ctx, dtype=params[0].dtype if params else np.float32)
    walk = Walk()
    with autograd.pause(train_mode=False):
        bound, _ = walk.bound(net, x)
    return NetworkBound(bound, walk.layers)


# -- the rules ----------------------------------------------------------------------------------------
def _activation(block: Any, walk: Walk, act: Any) -> float:
    """The bound of a layer's fused ``activation=`` (1 without one)."""
    if act is None:
        return 1.0
    bound, _ = walk.bound(act, None)
    return bound


def _sequence(block: Any, x: Any, walk: Walk) -> Tuple[float, Any]:
    return walk.chain(compat.child_blocks(block), x)


def _dense(block: Any, x: Any, walk: Walk) -> Tuple[float, Any]:
    y = block(x)  # first: it completes a deferred initialisation
    weight = host_copy(block.weight.data(x.context))
    own = walk.record(block, f"Dense {weight.shape[1]}->{weight.shape[0]}: largest singular value",
                      dense_operator_norm(weight), True)
    return own * _activation(block, walk, block.act), y


def _convolution(block: Any, x: Any, walk: Walk) -> Tuple[float, Any]:
    """A convolution's (or transposed convolution's: its adjoint's) operator norm bound: the
    circular convolution of its live taps on the smallest circle that contains it, or on the
    circle of an OperatorNorm that constrains its weight where that is this input's padded
    size."""
    y = block(x)
    transposed, groups, layout = compat.convolution_settings(block)
    arguments = compat.layer_arguments(block)
    spatial = len(arguments["kernel"])
    channels_last = layout.endswith("C")
    sizes = (y if transposed else x).shape
    size = sizes[1:1 + spatial] if channels_last else sizes[2:2 + spatial]
    stride, dilation = tuple(arguments["stride"]), tuple(arguments["dilate"])
    weight = host_copy(block.weight.data(x.context))
    kernel = np.moveaxis(weight, -1, 1) if channels_last else weight
    padded = tuple(n + 2 * p for n, p in zip(size, arguments["pad"]))
    if _operator_norm_circle(block.weight, spatial) == padded:
        # the grid on which the weight's OperatorNorm holds the norm, when it is this input's:
        # n + 2p holds every read of every tap apart (another input's grid may not contain it)
        circle = tuple(-(-n // s) * s for n, s in zip(padded, stride))
    else:
        taps, circle = zero_padded_embedding(kernel.shape[2:], size, tuple(arguments["pad"]), stride, dilation)
        kernel = kernel[(slice(None), slice(None), *taps)]
    norm = conv_operator_norm(kernel, circle, dilation, groups, stride)
    kind = (f"{type(block).__name__} on {'x'.join(map(str, size))}: operator norm bound (circular convolution "
            f"on {'x'.join(map(str, circle))}, FFT)")
    own = walk.record(block, kind, norm, False)
    return own * _activation(block, walk, block.act), y


def _operator_norm_circle(param: Any, spatial: int) -> Optional[Tuple[int, ...]]:
    """The circle of an ``OperatorNorm`` constraining ``param`` (alone or in a ``Compose``), or
    None. Any circle that contains the zero-padded convolution bounds it; this is the one on
    which the constraint keeps the norm at most its ``max_value``, where another grid's samples
    of the same transfer function can be a little higher."""
    constraint = constraint_of(param)
    members = getattr(constraint, "constraints", (constraint,))
    circles = [m.circle(spatial) for m in members if isinstance(m, OperatorNorm)]
    return next((c for c in circles if c is not None), None)


def _activation_block(block: Any, x: Any, walk: Walk) -> Tuple[float, Any]:
    act_type = compat.layer_arguments(block)["act_type"]
    if act_type not in ACTIVATIONS:
        raise CertificationError(f"gluon-constraints has no Lipschitz constant for activation {act_type!r} "
                                 f"(block '{block.name}'): it knows {sorted(ACTIVATIONS)}.")
    bound = walk.record(block, f"Activation {act_type}", ACTIVATIONS[act_type], True)
    return bound, None if x is None else block(x)


def _slope(block: Any, x: Any, walk: Walk) -> Tuple[float, Any]:
    alpha = float(compat.layer_arguments(block)["slope"])
    return walk.record(block, f"{type(block).__name__}(alpha={alpha:g})", max(1.0, abs(alpha)), True), block(x)


def _fixed(constant: float, kind: str) -> Rule:
    def rule(block: Any, x: Any, walk: Walk) -> Tuple[float, Any]:
        return walk.record(block, kind, constant, True), None if x is None else block(x)
    return rule


def _prelu(block: Any, x: Any, walk: Walk) -> Tuple[float, Any]:
    y = block(x)
    alpha = float(np.abs(host_copy(block.alpha.data(x.context))).max())
    return walk.record(block, "PReLU", max(1.0, alpha), True), y


def _pooling(block: Any, x: Any, walk: Walk) -> Tuple[float, Any]:
    arguments = compat.layer_arguments(block)
    y = block(x)
    average = arguments["pool_type"] == "avg"
    if arguments.get("global_pool"):
        layout = arguments["layout"]
        positions = int(np.prod(x.shape[1:-1] if layout.endswith("C") else x.shape[2:]))
        bound = 1.0 / math.sqrt(positions) if average else 1.0
        return walk.record(block, f"global {'average' if average else 'max'} pooling", bound, True), y
    kernel, stride = arguments["kernel"], arguments["stride"]
    windows = int(np.prod([math.ceil(k / s) for k, s in zip(kernel, stride)]))
    full_windows = arguments.get("pooling_convention", "valid") == "valid" and (
        arguments.get("count_include_pad", True) or not any(arguments["pad"]))
    if average and full_windows:
        bound = math.sqrt(windows / np.prod(kernel))
    else:  # a border window cut by ceil_mode, or without its padding, averages fewer entries: as max pooling
        bound = math.sqrt(windows)
    kind = f"{'average' if average else 'max'} pooling {tuple(kernel)}/{tuple(stride)}"
    return walk.record(block, kind, bound, False), y


def _batch_norm(block: Any, x: Any, walk: Walk) -> Tuple[float, Any]:
    y = block(x)
    arguments = compat.layer_arguments(block)
    variance = host_copy(block.running_var.data(x.context)).astype(np.float64)
    gamma = 1.0 if arguments.get("fix_gamma") else np.abs(host_copy(block.gamma.data(x.context)))
    bound = float(np.max(gamma / np.sqrt(variance + arguments["eps"]))) * (1.0 + 1e-9)
    return walk.record(block, "BatchNorm (running statistics)", bound, True), y


def _concurrent(block: Any, x: Any, walk: Walk) -> Tuple[float, Any]:
    bounds = [walk.bound(child, x)[0] for child in compat.child_blocks(block)]
    bound = math.sqrt(sum(b * b for b in bounds))
    return walk.record(block, f"concatenation of {len(bounds)} branches", bound, False), block(x)


def _residual_v1(block: Any, x: Any, walk: Walk) -> Tuple[float, Any]:
    """ResNet V1: relu(body(x) + shortcut(x)), the shortcut the identity or ``downsample``."""
    body, _ = walk.bound(block.body, x)
    shortcut = walk.bound(block.downsample, x)[0] if block.downsample is not None else 1.0
    return walk.record(block, "residual sum (body + shortcut), then ReLU", body + shortcut, False), block(x)


def _residual_v2(block: Any, x: Any, walk: Walk) -> Tuple[float, Any]:
    """ResNet V2 (pre-activation): h = relu(bn1(x)); the main branch runs conv1, then (bn, relu,
    conv) pairs on h; the shortcut is x itself, or downsample(h)."""
    first, h = walk.bound(block.bn1, x)
    h = nd.relu(h)
    main, _ = walk.bound(block.conv1, h)
    stages = [(block.bn2, block.conv2)] + ([(block.bn3, block.conv3)] if hasattr(block, "conv3") else [])
    y = block.conv1(h)
    for norm, conv in stages:
        scale, y = walk.bound(norm, y)
        step, y = walk.bound(conv, nd.relu(y))
        main *= scale * step
    if block.downsample is not None:
        bound = first * (main + walk.bound(block.downsample, h)[0])
    else:
        bound = 1.0 + first * main
    return walk.record(block, "pre-activation residual sum", bound, False), block(x)


def _features_then_output(block: Any, x: Any, walk: Walk) -> Tuple[float, Any]:
    """The model zoo's classifiers: ``output(features(x))``."""
    return walk.chain([block.features, block.output], x)


def _refused(reason: str) -> Rule:
    def rule(block: Any, x: Any, walk: Walk) -> Tuple[float, Any]:
        raise CertificationError(f"gluon-constraints cannot bound block '{block.name}' "
                                 f"({type(block).__name__}): {reason}")
    return rule


def _install_rules() -> None:
    nn = gluon.nn
    for sequence in (nn.Sequential, nn.HybridSequential):
        RULES[sequence] = _sequence
    RULES[nn.Dense] = _dense
    RULES[compat.convolution_base()] = _convolution
    RULES[nn.Activation] = _activation_block
    RULES[nn.LeakyReLU] = _slope
    RULES[nn.ELU] = _slope
    RULES[nn.PReLU] = _prelu
    RULES[nn.SELU] = _fixed(ACTIVATIONS["selu"], "SELU")
    RULES[nn.GELU] = _fixed(ACTIVATIONS["gelu"], "GELU")
    RULES[nn.Swish] = _fixed(ACTIVATIONS["swish"], "Swish")
    for block in (nn.Flatten, nn.Dropout):
        RULES[block] = _fixed(1.0, block.__name__)
    RULES[compat.pooling_base()] = _pooling
    RULES[nn.BatchNorm] = _batch_norm
    contrib = gluon.contrib.nn
    for block in (contrib.HybridConcurrent, contrib.Concurrent):
        RULES[block] = _concurrent
    RULES[contrib.Identity] = _fixed(1.0, "Identity")
    from mxnet.gluon.model_zoo.vision import resnet, vgg
    from mxnet.gluon.model_zoo.vision.alexnet import AlexNet

    for block in (resnet.BasicBlockV1, resnet.BottleneckV1):
        RULES[block] = _residual_v1
    for block in (resnet.BasicBlockV2, resnet.BottleneckV2):
        RULES[block] = _residual_v2
    for block in (resnet.ResNetV1, resnet.ResNetV2, vgg.VGG, AlexNet):
        RULES[block] = _features_then_output
    RULES[nn.Embedding] = _refused("an embedding takes indices, not points of a normed space")
    for block in (nn.LayerNorm, nn.InstanceNorm, nn.GroupNorm):
        RULES[block] = _refused("its normalisation divides by the input's own spread, which has no "
                                "Lipschitz constant")


_install_rules()
