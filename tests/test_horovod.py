"""gc.enforce on Horovod's DistributedTrainer, 2 workers over Gloo on this machine."""

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import training_reference as ref
from processes import run
from tolerances import assert_float32_close

pytestmark = pytest.mark.distributed
pytest.importorskip("horovod.mxnet", reason="Horovod is installed by `make test`")

HERE = Path(__file__).parent
LR, MOMENTUM, BOUND, STEPS, BATCH = 0.2, 0.9, 0.6, 6, 8


def test_horovod_workers_keep_constraints_and_match_single_process(tmp_path):
    horovodrun = shutil.which("horovodrun", path=str(Path(sys.executable).parent))
    command = [horovodrun, "-np", "2", "-H", "localhost:2", "--gloo",
               sys.executable, str(HERE / "horovod_worker.py"), "--out", str(tmp_path)]
    code, output = run(command, timeout=120, cwd=HERE, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert code == 0, output
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for report in reports:
        assert report["optimizer"] == "ConstrainedOptimizer(SGD)"
        assert not Path(f"/proc/{report['pid']}").exists(), "a Horovod worker was left behind"
    arrays = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(2)]
    for key in arrays[0]:
        assert arrays[0][key].tobytes() == arrays[1][key].tobytes(), key
    expected = ref.train(ref.initial_weights(), ref.batches(STEPS, 2 * BATCH), LR, MOMENTUM, BOUND,
                         batch_size=BATCH)
    for name, value in arrays[0].items():
        short = name[len("mlp_"):]
        # float32 against float64: per step a gradient of 2 * BATCH examples over the widest
        # fan-in, and about ten roundings of the update and projection (tests/tolerances.py)
        assert_float32_close(value, expected[short], STEPS * (2 * BATCH * ref.HIDDEN + 10), err_msg=name)
        if short.endswith("weight"):
            assert np.sqrt((value.astype(np.float64) ** 2).sum(axis=1)).max() <= BOUND * (1 + 1e-5)
