"""Constraints on MXNet's parameter-server kvstores, with real local clusters.

Each test starts one job with ``python -m gluon_constraints.launch`` (scheduler, 2 servers,
2 workers on 127.0.0.1, a free port, bounded timeout) and checks what the workers saved.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gluon_constraints as gc
import training_reference as ref
from tolerances import assert_float32_close

pytestmark = pytest.mark.distributed

HERE = Path(__file__).parent
LR, MOMENTUM, BOUND, STEPS, BATCH = 0.2, 0.9, 0.6, 6, 8
# What float32 training rounds against the float64 oracle or one process: per step a gradient
# sums the two workers' 2 * BATCH examples over the widest fan-in, and the update and the
# projection add about ten roundings (tests/tolerances.py).
OPERATIONS = STEPS * (2 * BATCH * ref.HIDDEN + 10)


def run_job(tmp_path, *worker_args, servers=2, env=None, timeout=90, worker="distributed_worker.py"):
    """Run one job of ``worker``; return ({rank: report}, {rank: arrays}, server logs)."""
    logs = tmp_path / "logs"
    command = [sys.executable, "-m", "gluon_constraints.launch", "-n", "2", "-s", str(servers),
               "--timeout", str(timeout), "--log-dir", str(logs), "--",
               sys.executable, str(HERE / worker), "--out", str(tmp_path), *worker_args]
    job_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    result = subprocess.run(command, env=job_env, timeout=timeout + 30, capture_output=True, text=True)
    pids = [int(line.split()[1]) for line in (logs / "pids").read_text().splitlines()]
    assert not [p for p in pids if _alive(p)], "the launcher left processes behind"
    reports = {r: json.loads((tmp_path / f"rank{r}.json").read_text())
               for r in range(2) if (tmp_path / f"rank{r}.json").exists()}
    arrays = {r: dict(np.load(tmp_path / f"rank{r}.npz")) for r in reports}
    server_logs = "".join((logs / f"server{i}.log").read_text(errors="replace") for i in range(servers))
    assert result.returncode == 0, result.stderr + "".join(
        p.read_text(errors="replace") for p in logs.glob("*.log"))
    assert sorted(reports) == [0, 1]
    return reports, arrays, server_logs


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def weights(arrays, suffix="ctx0"):
    return {k.split("/")[0][len("mlp_"):]: v for k, v in arrays.items() if k.endswith("/" + suffix)}


def assert_feasible(named_arrays):
    for name, w in named_arrays.items():
        if name.endswith("weight"):
            norms = np.sqrt((w.astype(np.float64) ** 2).sum(axis=1))
            assert norms.max() <= BOUND * (1 + 1e-5), f"{name}: {norms.max()}"


@pytest.fixture(scope="module")
def oracle():
    """The single-process run on the union of both workers' batches (servers sum gradients)."""
    data = ref.batches(STEPS, 2 * BATCH)
    return ref.train(ref.initial_weights(), data, LR, MOMENTUM, BOUND, batch_size=BATCH)


SYNC = [
    ("dist_sync", "none", True), ("dist_sync", "true", True), ("dist_sync", "false", False),
    ("dist_device_sync", "none", True), ("dist_device_sync", "true", True), ("dist_device_sync", "false", False),
]


@pytest.mark.parametrize("kvstore,uokv,on_servers", SYNC, ids=[f"{k}-uokv-{u}" for k, u, _ in SYNC])
def test_sync_workers_are_identical_feasible_and_match_single_process(kvstore, uokv, on_servers, oracle, tmp_path):
    reports, arrays, server_logs = run_job(tmp_path, "--kvstore", kvstore, "--uokv", uokv)
    assert "Exception ignored" not in server_logs
    for rank in (0, 1):
        assert reports[rank]["error"] is None
        assert reports[rank]["update_on_kvstore"] is on_servers
        assert reports[rank]["verified"] == "ok"
    assert arrays[0].keys() == arrays[1].keys()
    for key in arrays[0]:
        assert arrays[0][key].tobytes() == arrays[1][key].tobytes(), f"workers differ on {key}"
    ours = weights(arrays[0])
    assert_feasible(ours)
    for name, expected in oracle.items():
        assert_float32_close(ours[name], expected, OPERATIONS, err_msg=name)
    if on_servers:
        servers = weights(arrays[0], "server")
        assert_feasible(servers)
        for name, value in servers.items():
            assert value.tobytes() == ours[name].tobytes(), f"server copy of {name} differs"


def test_two_contexts_per_worker(oracle, tmp_path):
    reports, arrays, _ = run_job(tmp_path, "--kvstore", "dist_device_sync", "--contexts", "2")
    for rank in (0, 1):
        assert reports[rank]["verified"] == "ok"
        for key in [k for k in arrays[rank] if k.endswith("/ctx1")]:
            assert arrays[rank][key].tobytes() == arrays[rank][key.replace("ctx1", "ctx0")].tobytes()
    ours = weights(arrays[0])
    for name, expected in oracle.items():
        assert_float32_close(ours[name], expected, OPERATIONS, err_msg=name)


@pytest.mark.parametrize("uokv", ["none", "true"])
def test_async_copies_are_all_feasible(uokv, tmp_path):
    reports, arrays, server_logs = run_job(tmp_path, "--kvstore", "dist_async", "--uokv", uokv)
    assert "Exception ignored" not in server_logs
    for rank in (0, 1):
        assert reports[rank]["error"] is None and reports[rank]["update_on_kvstore"] is True
        assert reports[rank]["verified"] == "ok", reports[rank]["verified"]
        assert_feasible(weights(arrays[rank]))
        assert_feasible(weights(arrays[rank], "server"))
        # Async workers drift apart by design; each still moved away from the initial weights.
        initial = ref.initial_weights()
        assert all(not np.allclose(w, initial[n]) for n, w in weights(arrays[rank]).items())


SPLIT_ENV = {"MXNET_KVSTORE_BIGARRAY_BOUND": "30"}  # the (8, 5) weight (40 elements) is cut in two


def test_split_parameter_moves_the_update_to_the_workers(oracle, tmp_path):
    reports, arrays, server_logs = run_job(tmp_path, "--kvstore", "dist_sync", env=SPLIT_ENV)
    assert "Exception ignored" not in server_logs
    for rank in (0, 1):
        assert reports[rank]["error"] is None
        assert reports[rank]["update_on_kvstore"] is False
    for key in arrays[0]:
        assert arrays[0][key].tobytes() == arrays[1][key].tobytes()
    ours = weights(arrays[0])
    for name, expected in oracle.items():
        assert_float32_close(ours[name], expected, OPERATIONS, err_msg=name)


@pytest.mark.parametrize("kvstore,uokv", [("dist_sync", "true"), ("dist_async", "none")])
def test_split_parameter_with_update_on_servers_is_refused(kvstore, uokv, tmp_path):
    reports, _, _ = run_job(tmp_path, "--kvstore", kvstore, "--uokv", uokv, env=SPLIT_ENV)
    for rank in (0, 1):
        error = reports[rank]["error"]
        assert error.startswith("Parameter 'mlp_dense0_weight' of shape (8, 5) (40 elements) has a norm "
                                "constraint, but it has at least MXNET_KVSTORE_BIGARRAY_BOUND=30 elements "
                                "and there are 2 servers")
        assert "raise MXNET_KVSTORE_BIGARRAY_BOUND above 40" in error
        assert ("set update_on_kvstore=False" in error) == (kvstore == "dist_sync")


def test_constraint_class_in_main_is_refused_before_the_servers_see_it(tmp_path):
    reports, _, server_logs = run_job(tmp_path, "--kvstore", "dist_sync", "--main-constraint")
    assert "Exception ignored" not in server_logs
    for rank in (0, 1):
        assert reports[rank]["error"].startswith(
            "The constraint class MainModuleMaxNorm is defined in __main__, which the parameter servers "
            "cannot import")


def test_constraint_class_in_main_is_fine_when_workers_update(oracle, tmp_path):
    reports, arrays, _ = run_job(tmp_path, "--kvstore", "dist_sync", "--uokv", "false", "--main-constraint")
    assert reports[0]["error"] is None and reports[0]["verified"] == "ok"
    assert_feasible(weights(arrays[0]))


WIDER = {
    "clip": (lambda: gc.Clip(-0.05, 0.05), 1),
    "spectral-norm": (lambda: gc.SpectralNorm(0.5), 1),
    "scheduled-simplex-every-2": (lambda: gc.Scheduled(gc.Simplex(1.0), start=3.0, steps=4, argument="radius"), 2),
}


@pytest.mark.parametrize("name", sorted(WIDER))
def test_wider_catalogue_on_the_servers_matches_single_process(name, tmp_path):
    # Elementwise, whole-matrix with a power-iteration vector kept on the servers, and a
    # per-unit schedule with a cadence: the servers' projections equal one process's.
    import mxnet as mx
    from mxnet import autograd

    from distributed_worker import build_net

    factory, every = WIDER[name]
    net = build_net([mx.cpu(0)], factory())
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": LR, "momentum": MOMENTUM},
                                    kvstore=None, every=every)
    for x, y in ref.batches(STEPS, 2 * BATCH):
        with autograd.record():
            loss = 0.5 * ((net(mx.nd.array(x)) - mx.nd.array(y)) ** 2).sum()
        loss.backward()
        trainer.step(BATCH)
    expected = {k[len("mlp_"):]: v.data().asnumpy() for k, v in net.collect_params().items()}

    reports, arrays, _ = run_job(tmp_path, "--kvstore", "dist_sync", "--constraint",
                                 json.dumps(gc.serialize(factory())), "--every", str(every))
    for rank in (0, 1):
        assert reports[rank]["update_on_kvstore"]
        # verify_constraints checks SpectralNorm with its standalone 20-iteration estimate, which
        # can exceed the in-training one (one iteration per step, converging over the steps) by
        # the power iteration's error: 1.2% after these 6 steps. The SVD shows it is bounded.
        assert reports[rank]["verified"] == "ok" or name == "spectral-norm"
        for key, value in weights(arrays[rank]).items():
            assert_float32_close(value, expected[key], OPERATIONS, err_msg=f"{name} {key}")
            if name == "spectral-norm" and key.endswith("weight"):
                assert np.linalg.svd(value.astype(np.float64), compute_uv=False)[0] <= 0.5 * 1.05


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_servers_project_the_rows_they_update_of_row_sparse_weights(optimizer, tmp_path):
    """dist_sync keeps a row-sparse weight whole on the servers, which update and project the rows
    the gradients have, as one process's kvstore does with the two workers' halves on two contexts."""
    import mxnet as mx
    from mxnet import autograd

    import sparse_worker as job

    reports, arrays, server_logs = run_job(tmp_path, "--kvstore", "dist_sync", "--optimizer", optimizer,
                                           worker="sparse_worker.py")
    assert "Exception ignored" not in server_logs
    for rank in (0, 1):
        assert reports[rank] == {"update_on_kvstore": True, "verified": "ok"}
    assert arrays[1]["server"].tobytes() == arrays[0]["server"].tobytes()
    contexts = [mx.cpu(0), mx.cpu(1)]
    net = job.build_net(contexts)
    initial = net[0].weight._data[0].asnumpy()
    trainer = gc.ConstrainedTrainer(net.collect_params(), optimizer, dict(job.OPTIONS[optimizer]))
    for x in job.batches():
        with autograd.record():
            losses = [job.loss_of(net, mx.nd.array(x[r * job.BATCH:(r + 1) * job.BATCH], ctx=c))
                      for r, c in enumerate(contexts)]
        for loss in losses:
            loss.backward()
        trainer.step(1)
    expected = job.stored_rows(trainer._kvstore, trainer, net[0].weight)
    servers = arrays[0]["server"]
    assert_float32_close(servers, expected, 8 * job.STEPS)
    assert np.linalg.norm(servers.astype(np.float64), axis=1).max() <= job.BOUND * (1 + 1e-6)
    np.testing.assert_array_equal(servers[30:], initial[30:])  # rows no batch touched
