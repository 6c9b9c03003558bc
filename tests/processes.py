"""Running subprocesses from tests: bounded waits, and nothing left behind."""

import os
import signal
import subprocess


def finish(process, timeout):
    """Wait for ``process`` at most ``timeout`` seconds, kill its process group if it is still
    running, and return its output."""
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return output


def run(command, timeout, **kwargs):
    """Run ``command`` in a process group of its own; return ``(exit code, output)``."""
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, **kwargs)
    output = finish(process, timeout)
    return process.returncode, output
