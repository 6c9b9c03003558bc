"""The demo's max-norm training on MXNet's parameter-server kvstore or on Horovod.

Parameter server, on this machine (scheduler, 2 servers, 2 workers)::

    python -m gluon_constraints.launch -n 2 -s 2 python examples/distributed.py --kvstore dist_sync

Horovod (install the ``horovod`` extra, see docs/distributed.md)::

    horovodrun -np 2 -H localhost:2 --gloo python examples/distributed.py --horovod

Every worker trains examples/digits_maxnorm.py's dropout network (float64, centred digits, the
same batches and dropout masks) on its half of each batch, with ``MaxNorm`` on every weight
matrix; the servers (or Horovod's allreduce) combine the halves, so the job trains the network a
single process trains on whole batches. Rank 0 prints the test error, which equals
``python examples/digits_maxnorm.py --lrs 0.1 --seeds 1`` (the MaxNorm column), and every worker
checks its copies with ``trainer.verify_constraints()``. (At the edge of stability, lr 0.3, runs
are chaotic: the rounding of half-batch products, which depends on BLAS threading, can change
the digits.)
"""

import argparse
import os
import sys

import mxnet as mx
from tqdm import tqdm

import gluon_constraints as gc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import digits_maxnorm as demo  # noqa: E402 - the demo's data, network and training loop


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kvstore", default="dist_sync",
                        help="dist_sync, dist_device_sync or dist_async (parameter server)")
    parser.add_argument("--horovod", action="store_true", help="use Horovod instead")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    options, rest = parser.parse_known_args()
    args = demo.arguments(rest)

    if options.horovod:
        import horovod.mxnet as hvd

        hvd.init()
        rank, workers = hvd.rank(), hvd.size()

        def trainer_factory(params, settings):
            hvd.broadcast_parameters(params, root_rank=0)
            return gc.enforce(hvd.DistributedTrainer(params, "sgd", settings))

        step_size = args.batch_size // workers  # Horovod averages the workers' gradients
    else:
        kvstore = mx.kv.create(options.kvstore)
        rank, workers = kvstore.rank, kvstore.num_workers

        def trainer_factory(params, settings):
            # The workers update (and project): the demo lowers the learning rate every epoch,
            # and MXNet does not pass set_learning_rate on to the servers' optimizer.
            return gc.ConstrainedTrainer(params, "sgd", settings, kvstore=kvstore, update_on_kvstore=False)

        step_size = args.batch_size  # the servers sum the workers' gradients

    share = args.batch_size // workers

    def part(arrays):
        return [a[rank * share:(rank + 1) * share] for a in arrays]

    trainers = []

    def recorded(params, settings):
        trainers.append(trainer_factory(params, settings))
        return trainers[-1]

    with tqdm(total=args.epochs, unit="epoch", disable=rank != 0, file=sys.stdout,
              desc=f"lr {options.lr:g} MaxNorm({args.max_norm:g}) seed {options.seed}") as progress:
        result = demo.train(options.lr, args.max_norm, options.seed, demo.load_data(), args, progress,
                            trainer_factory=recorded, part=part, step_size=step_size)
    trainers[0].verify_constraints()
    if rank == 0:
        print(f"{workers} workers: test error {result['error']:.4f} "
              f"({'diverged' if result['diverged'] else 'finite'})", flush=True)


if __name__ == "__main__":
    main()
