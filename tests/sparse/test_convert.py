"""pk.sparse.convert: decisions from (injected) timings, exact outputs, untouched on failure."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.sparse import SparseConv2d, SparseLinear


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # grouped: never converted
        self.fc1 = nn.Linear(8 * 6 * 6, 32)
        self.fc2 = nn.Linear(32, 10)
        self.unused = nn.Linear(4, 4)

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.conv(x))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def sparse_net(density: float = 0.1) -> Net:
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(torch.rand_like(m.weight) < density)
    return net


def fake_timer(table: dict[str, dict[str, float]]):
    """A timer that runs nothing and returns fixed numbers (tests never assert real timings)."""
    calls = []

    def timer(layer, runs):
        calls.append((layer, sorted(runs)))
        return {k: table.get(layer, {}).get(k, 1.0) for k in runs}

    timer.calls = calls
    return timer


X = torch.randn(2, 3, 6, 6)


def test_choices_follow_the_timer_and_outputs_match():
    net = sparse_net()
    ref = copy.deepcopy(net)
    timer = fake_timer(
        {
            "conv": {"dense": 1.0, "native": 0.5, "torch_csr": 0.8},  # native wins
            "fc1": {"dense": 1.0, "native": 0.9, "torch_csr": 0.4},  # torch_csr wins
            "fc2": {"dense": 1.0, "native": 1.2, "torch_csr": 1.1},  # both slower: dense
        }
    )
    report = pk.sparse.convert(net, X, timer=timer)
    kernels = {c.name: c.kernel for c in report.layers}
    assert kernels == {
        "conv": "native",
        "dw": "dense",
        "fc1": "torch_csr",
        "fc2": "dense",
        "unused": "dense",
    }
    assert isinstance(net.conv, SparseConv2d) and net.conv.kernel == "native"
    assert isinstance(net.fc1, SparseLinear) and net.fc1.kernel == "torch_csr"
    assert type(net.fc2) is nn.Linear and type(net.dw) is nn.Conv2d
    assert report.converted == ["conv", "fc1"]
    by_name = {c.name: c for c in report.layers}
    assert by_name["fc1"].dense_ms == 1.0 and by_name["fc1"].sparse_ms == 0.4
    assert by_name["fc1"].speedup == pytest.approx(2.5)
    assert "groups" in by_name["dw"].reason
    assert "not called" in by_name["unused"].reason
    assert by_name["fc1"].input_shape == [2, 288]
    assert {layer for layer, _ in timer.calls} == {"conv", "fc1", "fc2", "<model>"}
    assert timer.calls[-1] == ("<model>", ["converted", "dense"])  # the whole model, last
    with torch.no_grad():
        y, y_ref = net(X), ref(X)
    assert float((y - y_ref).abs().max() / y_ref.abs().max()) < 1e-5
    assert list(net.state_dict()) == list(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    text = report.summary()
    assert "fc1" in text and "torch_csr" in text and "2/5 layers converted" in text
    assert report.to_dict()["layers"][2]["speedup"] == pytest.approx(2.5)


def test_min_speedup_keeps_marginal_layers_dense():
    net = sparse_net()
    timer = fake_timer({"fc1": {"dense": 1.0, "native": 0.97, "torch_csr": 0.99}})
    report = pk.sparse.convert(net, X, timer=timer, layers=["fc1"])
    assert report.converted == []
    assert "1.03x < 1.1x" in report.layers[0].reason
    report = pk.sparse.convert(net, X, timer=timer, layers=["fc1"], min_speedup=1.0)
    assert report.converted == ["fc1"]


def test_dense_layers_are_not_timed():
    net = sparse_net(density=0.9)
    timer = fake_timer({})
    report = pk.sparse.convert(net, X, timer=timer)
    assert timer.calls == [] and report.converted == []
    assert all("max_density" in c.reason for c in report.layers if c.name in ("conv", "fc1", "fc2"))


def test_measure_false_converts_every_eligible_layer():
    net = sparse_net()
    report = pk.sparse.convert(net, X, measure=False, kernels=["torch_csr"], ignore=["fc2"])
    assert report.converted == ["conv", "fc1"]
    assert all(c.dense_ms is None for c in report.layers)
    assert net.fc1.kernel == "torch_csr"


def test_real_timing_runs_and_never_changes_outputs():
    net = sparse_net()
    ref = copy.deepcopy(net)
    report = pk.sparse.convert(net, X)  # whatever it chooses, the function is the same
    for c in report.layers:
        if c.kernel != "dense" or c.dense_ms is not None:
            assert c.dense_ms > 0 and c.sparse_ms > 0
    with torch.no_grad():
        torch.testing.assert_close(net(X), ref(X), rtol=1e-5, atol=1e-6)


def test_masks_are_kept_and_shared_modules_replaced_everywhere():
    torch.manual_seed(0)
    shared = nn.Linear(16, 16)
    with torch.no_grad():
        shared.weight.mul_(torch.rand(16, 16) < 0.2)
    shared.register_buffer("weight_mask", shared.weight != 0)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    ref = copy.deepcopy(model)
    pk.sparse.convert(model, torch.randn(3, 16), measure=False)
    assert isinstance(model[0], SparseLinear) and model[0] is model[2]
    assert torch.equal(model.state_dict()["0.weight_mask"], ref.state_dict()["0.weight_mask"])
    x = torch.randn(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-6)


def test_failure_leaves_the_model_untouched():
    net = sparse_net()

    def broken_timer(layer, runs):
        if layer == "fc2":
            raise RuntimeError("timer failed")
        return {k: (0.1 if k != "dense" else 1.0) for k in runs}

    with pytest.raises(RuntimeError, match="timer failed"):
        pk.sparse.convert(net, X, timer=broken_timer)
    assert type(net.conv) is nn.Conv2d and type(net.fc1) is nn.Linear


def test_bad_arguments():
    net = sparse_net()
    with pytest.raises(TypeError, match="nn.Module"):
        pk.sparse.convert("model", X)
    with pytest.raises(ValueError, match="unknown sparse kernel"):
        pk.sparse.convert(net, X, kernels=["bsr"])
    with pytest.raises(TypeError, match="list of name globs"):
        pk.sparse.convert(net, X, ignore="fc2")
    with pytest.raises(ValueError, match="min_speedup"):
        pk.sparse.convert(net, X, min_speedup=0)


def test_densify_restores_plain_layers():
    net = sparse_net()
    ref = copy.deepcopy(net)
    pk.sparse.convert(net, X, measure=False)
    pk.sparse.densify(net)
    assert type(net.fc1) is nn.Linear and type(net.conv) is nn.Conv2d
    for k, v in ref.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k


def test_capturing_inputs_has_no_side_effects():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)).train()
    before = copy.deepcopy(model.state_dict())
    pk.sparse.convert(model, torch.randn(4, 8), measure=False)
    assert model.training and model[1].training
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v), k  # running stats untouched


def test_a_conversion_slower_end_to_end_is_undone():
    net = sparse_net()
    ref = copy.deepcopy(net)
    timer = fake_timer(
        {
            "fc1": {"dense": 1.0, "native": 0.5, "torch_csr": 0.6},
            "<model>": {"dense": 1.0, "converted": 1.2},  # wins alone, loses in context
        }
    )
    report = pk.sparse.convert(net, X, timer=timer)
    assert report.converted == [] and type(net.fc1) is nn.Linear
    assert report.model_dense_ms == 1.0 and report.model_sparse_ms == 1.2
    assert "reverted" in {c.name: c for c in report.layers}["fc1"].reason
    with torch.no_grad():
        assert torch.equal(net(X), ref(X))
    report = pk.sparse.convert(net, X, timer=timer, check_model=False)
    assert report.converted == ["fc1"] and report.model_dense_ms is None
