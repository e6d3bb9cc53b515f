"""prunekit.recalibrate_bn: BatchNorm statistics re-measured after pruning."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.data import TensorBatches
from prunekit.train import evaluate, fit


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def bn_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).eval()


def images(n: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 4, 4, generator=g) * torch.tensor([1.0, 2.0, 0.5]).view(3, 1, 1) + 1


def corrupt(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(10 * torch.randn_like(m.running_mean))
            m.running_var.fill_(1e3)


def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)


def test_one_batch_gives_the_statistics_of_the_data() -> None:
    model, x = bn_net(), images()
    corrupt(model)
    assert pk.recalibrate_bn(model, [(x, torch.zeros(len(x)))]) is model
    first, conv, second = model
    mean, var = stats(x)
    # what the second norm sees: the conv of the input normalised by its own batch statistics
    normed = F.batch_norm(x, None, None, first.weight, first.bias, training=True, eps=first.eps)
    mean2, var2 = stats(conv(normed).detach())
    for bn, m, v in ((first, mean, var), (second, mean2, var2)):
        torch.testing.assert_close(bn.running_mean, m, atol=1e-5, rtol=0)
        torch.testing.assert_close(bn.running_var, v, atol=1e-5, rtol=0)
        assert bn.num_batches_tracked.item() == 1


def test_batches_are_averaged_equally_and_counted() -> None:
    model, x = bn_net(), images(64)
    corrupt(model)
    chunks = list(x.split(16))
    consumed = []

    def data():
        for c in chunks:  # bare input batches, no targets
            consumed.append(c)
            yield c

    pk.recalibrate_bn(model, data(), batches=3)
    assert len(consumed) == 3  # no batch fetched beyond the limit
    bn = model[0]
    torch.testing.assert_close(bn.running_mean, stats(x[:48])[0], atol=1e-5, rtol=0)
    per_batch_var = torch.stack([stats(c)[1] for c in chunks[:3]]).mean(0)
    torch.testing.assert_close(bn.running_var, per_batch_var, atol=1e-5, rtol=0)
    assert bn.num_batches_tracked.item() == 3


def test_modes_and_momenta_are_restored() -> None:
    model = bn_net()
    model[1].train()  # a mixed-mode model
    model[2].momentum = 0.3
    modes = {name: m.training for name, m in model.named_modules()}
    pk.recalibrate_bn(model, [images()], batches=None)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert (model[0].momentum, model[2].momentum) == (0.1, 0.3)


def test_forward_fn_receives_the_inputs() -> None:
    model, x = bn_net(), images()
    corrupt(model)
    calls = []

    def forward(m, inputs):
        calls.append(inputs["pixels"].shape)
        return m(inputs["pixels"])

    pk.recalibrate_bn(model, [({"pixels": x}, None)], forward_fn=forward)
    assert calls == [x.shape]
    torch.testing.assert_close(model[0].running_mean, stats(x)[0], atol=1e-5, rtol=0)


def test_bad_data_is_refused_and_statistics_are_kept() -> None:
    model = bn_net()
    corrupt(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="pass an iterable"):
        pk.recalibrate_bn(model, None)
    with pytest.raises(ValueError, match="no batches"):
        pk.recalibrate_bn(model, [])
    with pytest.raises(TypeError, match="wrap a single tensor"):
        pk.recalibrate_bn(model, images())
    with pytest.raises(ValueError, match="batches must be >= 1"):
        pk.recalibrate_bn(model, [images()], batches=0)
    with pytest.raises(RuntimeError):  # a failing forward: old statistics put back
        pk.recalibrate_bn(model, [torch.randn(2, 5, 4, 4)])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model[0].momentum == 0.1 and not model.training


def test_no_batchnorm_warns_and_changes_nothing() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)).eval()
    with pytest.warns(UserWarning, match="no BatchNorm"):
        assert pk.recalibrate_bn(model, [torch.randn(2, 4)]) is model
    assert not any(m.training for m in model.modules())


def test_exported_graph_is_refused(zoo) -> None:
    model, x = zoo("seq_cnn")
    exported = torch.export.export(model, x).module()
    with pytest.raises(TypeError, match="exported graph"):
        pk.recalibrate_bn(exported, [x])
    plain = torch.export.export(nn.Linear(3, 2), (torch.randn(1, 3),)).module()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pk.recalibrate_bn(plain, [torch.randn(1, 3)])
    assert any("no BatchNorm" in str(w.message) for w in caught)


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 3),
    )


def test_recalibration_recovers_accuracy_after_pruning() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 3, 8, 8, generator=g)
    y = x.mean((2, 3)).argmax(1)  # the brightest colour channel
    torch.manual_seed(0)
    model = small_cnn()
    fit(model, TensorBatches(x, y, 64, shuffle=True), epochs=12, lr=0.1, progress=False)
    calib = TensorBatches(x, y, 64)
    dense = evaluate(model, calib)["accuracy"]
    pk.prune(model.eval(), x[:2], ratio=0.5)
    pruned = evaluate(model, calib)["accuracy"]
    pk.recalibrate_bn(model, calib, batches=None)
    recalibrated = evaluate(model, calib)["accuracy"]
    assert dense > 0.9 and pruned < dense - 0.2  # pruning left the statistics stale
    assert recalibrated > pruned + 0.1
