"""Data-parallel fine-tuning under torchrun: 2 CPU processes (gloo) equal one process with the
combined batch, and `torchrun -m prunekit run` writes one run directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TRAIN = """
import sys, torch
from safetensors.torch import save_file
from prunekit.data import TensorBatches
from prunekit.train import distributed, fit

distributed.init_from_env()
g = torch.Generator().manual_seed(1)
x = torch.randn(64, 6, generator=g)
y = (x.sum(1) > 0).long()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
data = TensorBatches(x, y, batch_size=int(sys.argv[2]), shuffle=True, seed=0)
fit(model, data, epochs=2, lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant",
    progress=False)
if distributed.is_main():
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, sys.argv[1])
distributed.shutdown()
"""


def torchrun(args: list[str], cwd: Path, env: dict[str, str] | None = None):
    runner = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if runner is None:
        pytest.skip("torchrun is not installed next to this Python")
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [runner, "--standalone", "--nproc_per_node", "2", *args]  # a free local port
    return subprocess.run(
        cmd, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_the_combined_batch(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    done = torchrun([str(script), str(tmp_path / "ddp.safetensors"), "8"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    single = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one.safetensors"), "16"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    ddp, one = load_file(tmp_path / "ddp.safetensors"), load_file(tmp_path / "one.safetensors")
    torch.manual_seed(0)
    start = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    for k, initial in start.state_dict().items():  # it trained, and both runs agree
        assert not torch.allclose(one[k], initial)
        torch.testing.assert_close(ddp[k], one[k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_torchrun_prunekit_run_writes_one_run_directory(tmp_path):
    from prunekit.data import write_idx_fixture

    data = write_idx_fixture(tmp_path / "data", n_train=128, n_test=32)
    (tmp_path / "tiny.yaml").write_text(
        "name: tiny\nseed: 0\nmodel: {spec: lenet5}\n"
        "data: {name: fashion-mnist, batch_size: 16}\n"
        "train: {epochs: 1, lr: 0.05}\nprune: {ratio: 0.5}\n"
        "finetune: {epochs: 1, lr: 0.01}\neval: {latency: false}\n"
    )
    env = {"PRUNEKIT_DATA": str(data), "PRUNEKIT_CACHE": str(tmp_path / "cache")}
    done = torchrun(
        ["-m", "prunekit", "run", "tiny.yaml", "--out", "runs/t", "--json", "-q"], tmp_path, env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)  # printed once, by rank 0
    assert report["history"]["finetune"]["steps"] == [128 // 16 // 2]  # each rank: half the data
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["t"]
    import prunekit

    assert prunekit.load(tmp_path / "runs" / "t").conv1.out_channels == 3
