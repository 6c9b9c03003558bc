"""Certification: an upper bound on a network's Lipschitz constant (``lipschitz``) and the
robustness it certifies (``robustness``). Reads Gluon networks; imports mxnet.gluon."""
