"""Run an MXNet parameter-server job (scheduler, servers, workers) on this machine.

``python -m gluon_constraints.launch -n 2 -s 2 python train.py --epochs 3``

starts one scheduler, ``-s`` servers and ``-n`` workers on 127.0.0.1 with a free port, each in
its own process group, and waits. When a process fails, on Ctrl-C or SIGTERM, or when
``--timeout`` expires, it tears every process it started down (SIGTERM, then SIGKILL after a
grace period) and exits with the first failure's exit code (124 on timeout, 130 on Ctrl-C, 143 on
SIGTERM). Signals only set a flag that the wait loop reads, so they can never interrupt the
start-up or the teardown half way. The mxnet wheel's own
``tools/launch.py`` crashes on Python 3.9+ and leaves processes behind; this one also makes each
child die with the launcher (``PR_SET_PDEATHSIG``) if the launcher is killed outright.

Scheduler and servers run ``python -c "import mxnet"``: with ``DMLC_ROLE`` set, importing mxnet
enters the server loop and exits when the workers finish. Workers run the given command with the
``DMLC_*`` variables set; their rank comes from ``mx.kv.create('dist_sync').rank``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Dict, List, Optional, Sequence, Set

from ..errors import LaunchError

__all__ = ["Cluster", "StopSignals", "free_port", "main"]

_PR_SET_PDEATHSIG = 1
_GRACE_S = 3.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class StopSignals:
    """SIGINT and SIGTERM recorded, for a wait loop to read, instead of exceptions.

    While installed, the handlers only note which of these signals arrived; nothing is raised, so
    no code can be interrupted half way. :meth:`check` keeps the first signal it sees in
    :attr:`received` and ignores later ones. Signals that arrive between two checks are taken
    lower number first (SIGINT before SIGTERM): their order cannot be known, since the handlers
    of two signals delivered together run in either order (the kernel stacks both frames, and
    Python runs a handler nested in another one that has just started).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._arrived: Set[int] = set()

    def install(self) -> None:
        """Record these signals from now on (in the main thread)."""
        for sig in self.SIGNALS:
            signal.signal(sig, self._note)

    def _note(self, signum: int, frame: object) -> None:
        self._arrived.add(signum)

    def check(self) -> Optional[int]:
        """The first of these signals received so far, or None.

        Returns
        -------
        int or None
            The signal number, which stays the same once set.
        """
        if self.received is None and self._arrived:
            self.received = min(self._arrived)
        return self.received


class Cluster:
    """The processes of one local parameter-server job.

    Parameters
    ----------
    command : sequence of str
        The worker command.
    workers : int
        Number of workers (``DMLC_NUM_WORKER``).
    servers : int
        Number of servers (``DMLC_NUM_SERVER``).
    host : str, default "127.0.0.1"
        Address everyone binds to and the scheduler listens on.
    log_dir : path or None, default None
        Write each process's output to ``<role><i>.log`` there (and the process ids to
        ``pids``); None lets every process write to this terminal.
    env : dict or None, default None
        Extra environment variables for every process.
    """

    def __init__(self, command: Sequence[str], workers: int, servers: int, host: str = "127.0.0.1",
                 log_dir: Optional[os.PathLike] = None, env: Optional[Dict[str, str]] = None) -> None:
        if workers < 1 or servers < 1:
            raise LaunchError(f"A job needs at least one worker and one server: got workers={workers}, "
                              f"servers={servers}. Pass workers >= 1 and servers >= 1.")
        if not command:
            raise LaunchError("No worker command given: pass the command each worker runs, e.g. "
                              "['python', 'train.py'].")
        self.command = list(command)
        self.workers, self.servers, self.host = workers, servers, host
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.extra_env = dict(env or {})
        self.processes: Dict[str, subprocess.Popen] = {}
        self._logs: List[IO[bytes]] = []

    def start(self) -> None:
        """Start scheduler, servers and workers."""
        base = dict(os.environ, **self.extra_env)
        base.update({
            "DMLC_PS_ROOT_URI": self.host, "DMLC_PS_ROOT_PORT": str(free_port(self.host)),
            "DMLC_NODE_HOST": self.host, "DMLC_NUM_SERVER": str(self.servers),
            "DMLC_NUM_WORKER": str(self.workers),
        })
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        serve = [sys.executable, "-c", "import mxnet"]
        self._spawn("scheduler", serve, dict(base, DMLC_ROLE="scheduler"))
        for i in range(self.servers):
            self._spawn(f"server{i}", serve, dict(base, DMLC_ROLE="server"))
        for i in range(self.workers):
            self._spawn(f"worker{i}", self.command, dict(base, DMLC_ROLE="worker"))
        if self.log_dir is not None:
            (self.log_dir / "pids").write_text(
                "".join(f"{name} {p.pid}\n" for name, p in self.processes.items()))

    def _spawn(self, name: str, command: Sequence[str], env: Dict[str, str]) -> None:
        output = None
        if self.log_dir is not None:
            output = open(self.log_dir / f"{name}.log", "wb")
            self._logs.append(output)
        self.processes[name] = subprocess.Popen(
            command, env=env, stdout=output, stderr=subprocess.STDOUT if output else None,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)

    def wait(self, timeout: Optional[float] = None, signals: Optional[StopSignals] = None) -> int:
        """Wait for the job; tear everything down on the first failure, signal or the timeout.

        Parameters
        ----------
        timeout : float or None, default None
            Seconds before the job is stopped; None waits for as long as it runs.
        signals : StopSignals or None, default None
            Stop the job as soon as one of these signals has been received.

        Returns
        -------
        int
            0 if every process exited 0; else the first failure's exit code (128 + signal
            number for a process killed by a signal), 124 if the timeout expired, or 128 + the
            number of the signal received.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        workers = [p for n, p in self.processes.items() if n.startswith("worker")]
        try:
            while True:
                received = None if signals is None else signals.check()
                if received is not None:
                    name = signal.Signals(received).name
                    print(f"gluon_constraints.launch: received {name}; stopping the job.",
                          file=sys.stderr)
                    return 128 + received
                for name, process in self.processes.items():
                    code = process.poll()
                    if code not in (None, 0):
                        print(f"gluon_constraints.launch: {name} (pid {process.pid}) exited with "
                              f"{_exit_code(code)}; stopping the job.", file=sys.stderr)
                        return _exit_code(code)
                if all(p.poll() is not None for p in self.processes.values()):
                    return 0
                if all(p.poll() == 0 for p in workers) and deadline is None:
                    # Workers are done: scheduler and servers exit by themselves shortly.
                    deadline = time.monotonic() + 30.0
                if deadline is not None and time.monotonic() > deadline:
                    if all(p.poll() == 0 for p in workers):
                        return 0
                    print(f"gluon_constraints.launch: timeout after {timeout} s; stopping the job.",
                          file=sys.stderr)
                    return 124
                time.sleep(0.05)
        finally:
            self.stop()

    def stop(self) -> None:
        """Terminate every process group this job started and wait until each is gone."""
        alive = [p for p in self.processes.values() if p.poll() is None]
        for process in alive:
            _signal_group(process, signal.SIGTERM)
        end = time.monotonic() + _GRACE_S
        while any(p.poll() is None for p in alive) and time.monotonic() < end:
            time.sleep(0.05)
        for process in self.processes.values():
            _signal_group(process, signal.SIGKILL)  # stragglers in the group, if any
            process.wait()
        for log in self._logs:
            log.close()
        self._logs.clear()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code


def _at_least_one(text: str) -> int:
    """An argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}") from None
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text}")
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit code (2, with a usage message, for bad
    arguments, as argparse does)."""
    parser = argparse.ArgumentParser(
        prog="python -m gluon_constraints.launch",
        description="Run an MXNet parameter-server job (scheduler, servers, workers) locally.")
    parser.add_argument("-n", "--num-workers", type=_at_least_one, required=True, help="number of workers")
    parser.add_argument("-s", "--num-servers", type=_at_least_one, default=None,
                        help="number of servers (default: as many as workers)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--timeout", type=_seconds, default=None, help="seconds before the job is stopped")
    parser.add_argument("--log-dir", default=None, help="write each process's output to files here")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the worker command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no worker command given (e.g. ... -n 2 python train.py)")
    if shutil.which(command[0]) is None:
        parser.error(f"the worker command {command[0]!r} was not found (not an executable file, "
                     f"nor on PATH)")
    cluster = Cluster(command, args.num_workers, args.num_servers or args.num_workers,
                      host=args.host, log_dir=args.log_dir)
    signals = StopSignals()
    signals.install()
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster.wait(args.timeout, signals)


if __name__ == "__main__":
    sys.exit(main())
