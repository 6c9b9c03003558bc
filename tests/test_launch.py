"""The local cluster launcher: exit codes, teardown, timeouts, Ctrl-C."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gluon_constraints.launch import free_port

pytestmark = pytest.mark.distributed


def launch(tmp_path, worker_code, *options):
    script = tmp_path / "worker.py"
    script.write_text(worker_code)
    return subprocess.Popen(
        [sys.executable, "-m", "gluon_constraints.launch", "-n", "2", "-s", "1", "--log-dir",
         str(tmp_path / "logs"), *options, "--", sys.executable, str(script)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def started_pids(tmp_path):
    return {line.split()[0]: int(line.split()[1])
            for line in (tmp_path / "logs" / "pids").read_text().splitlines()}


def assert_all_gone(tmp_path):
    for name, pid in started_pids(tmp_path).items():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            continue
        assert state == "Z", f"{name} (pid {pid}) is still running"


def finish(process, timeout=60):
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return output


def test_successful_job_exits_zero_and_sets_the_cluster_variables(tmp_path):
    process = launch(tmp_path, (
        "import os, mxnet as mx\n"
        "kv = mx.kv.create('dist_sync')\n"
        "print('rank', kv.rank, 'of', kv.num_workers, os.environ['DMLC_PS_ROOT_URI'], flush=True)\n"))
    finish(process)
    assert process.returncode == 0
    logs = "".join((tmp_path / "logs" / f"worker{i}.log").read_text() for i in range(2))
    assert sorted(line for line in logs.splitlines() if line.startswith("rank")) == [
        "rank 0 of 2 127.0.0.1", "rank 1 of 2 127.0.0.1"]
    assert_all_gone(tmp_path)


def test_first_failure_stops_the_job_and_gives_its_exit_code(tmp_path):
    process = launch(tmp_path, (
        "import os, mxnet as mx\n"
        "kv = mx.kv.create('dist_sync')\n"
        "os._exit(3) if kv.rank == 1 else kv._barrier()\n"))
    start = time.monotonic()
    output = finish(process)
    assert process.returncode == 3
    assert "exited with 3; stopping the job." in output
    assert time.monotonic() - start < 30, "the surviving worker must not be waited for"
    assert_all_gone(tmp_path)


def test_timeout_stops_the_job_with_124(tmp_path):
    process = launch(tmp_path, "import time\ntime.sleep(120)\n", "--timeout", "4")
    output = finish(process)
    assert process.returncode == 124
    assert "timeout after 4.0 s" in output
    assert_all_gone(tmp_path)


def test_interrupt_stops_the_job_with_130(tmp_path):
    process = launch(tmp_path, "import time\ntime.sleep(120)\n")
    deadline = time.monotonic() + 20
    while not (tmp_path / "logs" / "pids").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    finish(process)
    assert process.returncode == 130
    assert_all_gone(tmp_path)


def test_free_port_can_be_bound():
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_bad_arguments_are_refused():
    from gluon_constraints.launch import Cluster

    with pytest.raises(ValueError, match="A job needs at least one worker and one server: got workers=0"):
        Cluster(["python"], workers=0, servers=1)
    with pytest.raises(ValueError, match="No worker command given"):
        Cluster([], workers=1, servers=1)
