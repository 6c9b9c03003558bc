"""``python -m gluon_constraints.launch``: see :mod:`gluon_constraints.distributed.launch`."""

import sys

from .distributed.launch import Cluster, StopSignals, free_port, main

__all__ = ["Cluster", "StopSignals", "free_port", "main"]

if __name__ == "__main__":
    sys.exit(main())
