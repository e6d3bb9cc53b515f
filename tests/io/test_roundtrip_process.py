"""prune -> save -> load in a fresh Python process -> outputs identical to the pruned model."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import prunekit as pk

CHILD = """
import sys, torch
from safetensors.torch import load_file, save_file
import prunekit as pk
model = pk.load(sys.argv[1])
x = load_file(sys.argv[2])["x"]
with torch.no_grad():
    save_file({"y": model(x).contiguous()}, sys.argv[3])
"""


@pytest.mark.slow
def test_a_pruned_save_reloads_identically_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = pk.build_model("resnet20").eval()
    with torch.no_grad():  # trained-looking BatchNorm statistics, so that slicing them matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, *pk.models.input_shape("resnet20")[1:])
    result = pk.prune(model, x, ratio=0.5, verify=False)  # verification is tested elsewhere
    path = pk.save(result.model, tmp_path / "pruned", plan=result.plan, example_inputs=(x,))
    save_file({"x": x}, tmp_path / "x.safetensors")
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(path),
            str(tmp_path / "x.safetensors"),
            str(tmp_path / "y.safetensors"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr
    with torch.no_grad():
        want = result.model(x)
    assert torch.equal(load_file(tmp_path / "y.safetensors")["y"], want)
    assert sum(p.numel() for p in result.model.parameters()) < sum(
        p.numel() for p in pk.build_model("resnet20").parameters()
    )
