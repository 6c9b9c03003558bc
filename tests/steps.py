"""A training step the constraint tests share: the loss sum(net(x) ** 2), the batch split over
the contexts (a gradient that pushes weights outward, so constraints become active)."""

from mxnet import autograd, gluon


def backward_squared_output(net, x, ctx):
    """Record the loss on each context's share of ``x`` and run backward."""
    xs = gluon.utils.split_and_load(x, ctx)
    with autograd.record():
        losses = [(net(xb) ** 2).sum() for xb in xs]
    for loss in losses:
        loss.backward()


def squared_output_step(net, trainer, x, ctx):
    """One ``trainer.step`` on the loss sum(net(x) ** 2) over the whole batch ``x``."""
    backward_squared_output(net, x, ctx)
    trainer.step(x.shape[0])


def forbid_host_synchronisation(monkeypatch):
    """Make every host synchronisation (``asnumpy``, ``asscalar``, ``wait_to_read``, ``waitall``)
    raise and be recorded, until ``monkeypatch.undo()``; return the list of recorded names."""
    import mxnet as mx

    calls = []

    def forbidden(name):
        def record(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"host synchronisation ({name}) during a training step")
        return record

    for name in ("asnumpy", "asscalar", "wait_to_read"):
        monkeypatch.setattr(mx.nd.NDArray, name, forbidden(name))
    monkeypatch.setattr(mx.nd, "waitall", forbidden("waitall"))
    return calls
