"""Gluon integration: attaching constraints to parameters, fan-in layouts per layer type, the
layer keyword arguments and the ``nn`` / ``rnn`` drop-in modules. Imports ``mxnet.gluon``."""
