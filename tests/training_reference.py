"""A float64 numpy reference for training a small constrained MLP, independent of the package.

Network: x -> Dense(HIDDEN, relu) -> Dense(OUT); loss = 0.5 * sum((out - y)^2); MXNet's SGD with
momentum (``mom = momentum * mom - lr * rescale_grad * grad; w += mom``), then max-norm on each
weight's rows (the incoming weights of each unit), as the Dropout paper prescribes.
"""

import numpy as np

IN, HIDDEN, OUT = 5, 8, 3


def initial_weights(seed=7):
    rng = np.random.default_rng(seed)
    return {
        "dense0_weight": rng.normal(0, 0.6, (HIDDEN, IN)),
        "dense0_bias": rng.normal(0, 0.1, (HIDDEN,)),
        "dense1_weight": rng.normal(0, 0.6, (OUT, HIDDEN)),
        "dense1_bias": rng.normal(0, 0.1, (OUT,)),
    }


def batches(steps, batch_size, seed=11):
    rng = np.random.default_rng(seed)
    return [(rng.normal(0, 1.0, (batch_size, IN)), rng.normal(0, 2.0, (batch_size, OUT)))
            for _ in range(steps)]


def gradients(w, x, y):
    h_pre = x @ w["dense0_weight"].T + w["dense0_bias"]
    h = np.maximum(h_pre, 0)
    out = h @ w["dense1_weight"].T + w["dense1_bias"]
    d_out = out - y
    d_h = (d_out @ w["dense1_weight"]) * (h_pre > 0)
    return {
        "dense1_weight": d_out.T @ h, "dense1_bias": d_out.sum(0),
        "dense0_weight": d_h.T @ x, "dense0_bias": d_h.sum(0),
    }


def max_norm_rows(w, c):
    n = np.sqrt((w ** 2).sum(axis=1, keepdims=True))
    return w * c / np.maximum(n, c)


def train(weights, data, lr, momentum, max_norm, batch_size=None):
    """SGD+momentum with max-norm on both weight matrices after every update.

    Gradients are summed over each batch and divided by ``batch_size`` (default: the batch's
    length); a distributed job whose servers sum the workers' gradients is the union batch
    divided by one worker's batch size.
    """
    w = {k: v.astype(np.float64).copy() for k, v in weights.items()}
    mom = {k: np.zeros_like(v) for k, v in w.items()}
    for x, y in data:
        g = gradients(w, x, y)
        for k in w:
            mom[k] = momentum * mom[k] - lr * g[k] / (batch_size or len(x))
            w[k] = w[k] + mom[k]
            if k.endswith("weight"):
                w[k] = max_norm_rows(w[k], max_norm)
    return w
