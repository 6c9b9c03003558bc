"""The demos (README, docs/index.md#the-demo, docs/certification.md#the-demo-certified-digits):
the max-norm demo's numbers on one context, two contexts and a parameter-server job agree, the
certification demo's attack changes no prediction inside a certified radius, and both draw
their pictures."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHORT = ["--seeds", "1", "--epochs", "3"]


def demo(tmp_path, lr, *extra):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "digits_maxnorm.py"), *SHORT,
                          "--lrs", lr, "--out", str(tmp_path), *extra], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    row = re.search(rf"^\s+{re.escape(lr)} \| (.*?) \| (.*?)\s*$", out.stdout, re.M)
    return out.stdout, row.group(1).strip(), row.group(2).strip()


def test_two_contexts_give_the_numbers_of_one_and_the_pictures_exist(tmp_path):
    text, plain, constrained = demo(tmp_path / "one", "0.3")
    assert "diverged" in plain and re.fullmatch(r"0\.\d{4} \+- 0\.0000", constrained), text
    assert float(constrained.split()[0]) < 0.5  # max-norm keeps lr 0.3 training
    for name in ("lr-sweep.png", "unit-norms.png", "clipped.png"):
        assert (tmp_path / "one" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert str(tmp_path / "one" / name) in text  # it says where its pictures went
    assert demo(tmp_path / "two", "0.3", "--contexts", "2")[1:] == (plain, constrained)


@pytest.mark.distributed
def test_the_distributed_example_gives_the_numbers_of_one_process(tmp_path):
    # At lr 0.1 training is stable: the job's own BLAS threading (half batches per worker)
    # changes float64 rounding, which lr 0.3's chaotic runs would amplify into other numbers.
    _, _, constrained = demo(tmp_path, "0.1")
    logs = tmp_path / "logs"
    out = subprocess.run([sys.executable, "-m", "gluon_constraints.launch", "-n", "2", "-s", "2",
                          "--timeout", "200", "--log-dir", str(logs), "--", sys.executable,
                          str(ROOT / "examples" / "distributed.py"), "--epochs", "3", "--lr", "0.1"],
                         capture_output=True, text=True, timeout=260, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    printed = "".join(p.read_text(errors="replace") for p in logs.glob("worker*.log"))
    assert f"2 workers: test error {constrained.split()[0]} (finite)" in printed, printed[-3000:]


def test_the_certification_demo_certifies_and_no_attack_breaks_a_certificate(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "certified.py"), "--epochs", "2",
                          "--restarts", "2", "--steps", "5", "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = {tuple(m.group(1, 2)): m.group(3).split()
            for m in re.finditer(r"^(MLP|ConvNet)\s+(\w+)\s+(.*?)\s+0 changed$", out.stdout, re.M)}
    assert len(rows) == 8, out.stdout
    for (model, kind), numbers in rows.items():
        bound, certified = float(numbers[1]), [float(v) for v in numbers[3:]]
        assert certified == sorted(certified, reverse=True)  # fewer examples at larger radii
        if kind == "OperatorNorm" or (kind == "Orthogonal" and model == "MLP"):
            assert bound <= 1.001 ** 3, (model, kind)  # three layers, each at most 1 (+ tolerance)
    assert "No attack changed a prediction inside its certified radius." in out.stdout
    assert (tmp_path / "certified.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
