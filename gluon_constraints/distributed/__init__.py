"""Distributed training: decisions about parameter-server kvstores taken on the workers before
the first step, and the local launcher (``python -m gluon_constraints.launch``)."""
