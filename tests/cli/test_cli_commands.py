"""`prunekit analyze / prune / profile` on a small built-in model, and their bad-input exits."""

from __future__ import annotations

import json

import pytest
import torch

from prunekit.cli.main import main


def _error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunekit: error: "), err
    return lines[0]


def test_analyze_prints_the_groups(capsys):
    assert main(["analyze", "lenet5"]) == 0
    out = capsys.readouterr().out
    assert "prunable groups" in out and "layers by MACs (416,520 in all" in out
    assert "conv2                                        Conv2d" in out  # the costliest first
    assert main(["analyze", "lenet5", "--input-shape", "2,1,28,28", "--json"]) == 0
    graph = json.loads(capsys.readouterr().out)
    assert graph["macs"] == 2 * 416_520 and graph["layers"]["fc1"]["params"] == 400 * 120 + 120


def test_profile_a_spec(capsys):
    assert main(["profile", "lenet5", "--no-latency", "--batch-size", "4", "--json"]) == 0
    prof = json.loads(capsys.readouterr().out)
    assert prof["input_shape"] == [4, 1, 28, 28]
    assert prof["batch_size"] == 4 and prof["macs"] > 0 and prof["latency_ms"] is None
    assert main(["profile", "lenet5", "--no-latency"]) == 0
    assert "MACs" in capsys.readouterr().out


def test_prune_saves_a_loadable_model_and_prunes_it_again(tmp_path, capsys):
    import prunekit

    assert main(["prune", "lenet5", "--ratio", "0.5", "--out", "p1", "-q"]) == 0
    out = capsys.readouterr().out
    assert "params" in out and "verified" in out
    first = prunekit.load(tmp_path / "p1")
    meta = prunekit.io.read_metadata(tmp_path / "p1")
    assert meta["plan"] and meta["metadata"]["prune"]["verified"] is True

    # A saved directory is a MODEL everywhere; its input shape comes with it.
    assert main(["profile", "p1", "--no-latency", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == sum(
        p.numel() for p in first.parameters()
    )

    # Pruning the pruned save again composes both plans, so the result still loads.
    assert main(["prune", "p1", "--target-params", "0.5", "--out", "p2", "-q", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    second = prunekit.load(tmp_path / "p2")
    n = sum(p.numel() for p in second.parameters())
    assert n == summary["after"]["params"] < summary["before"]["params"]
    x = torch.randn(3, 1, 28, 28)
    assert second.eval()(x).shape == (3, 10)


def test_prune_overrides_set_a_layers_ratio(tmp_path, capsys):
    import prunekit

    argv = ["prune", "lenet5", "--ratio", "0.5", "--override", "fc1=0", "conv*=0.5", "-q"]
    assert main([*argv, "--override", "conv2=0.25", "--out", "p", "--json"]) == 0
    capsys.readouterr()
    model = prunekit.load(tmp_path / "p")
    assert (model.conv1.out_channels, model.conv2.out_channels) == (3, 12)  # last match wins
    assert (model.fc1.out_features, model.fc2.out_features) == (120, 42)


def test_prune_refuses_to_overwrite_without_flag(tmp_path, capsys):
    assert main(["prune", "lenet5", "--ratio", "0.3", "--out", "p", "-q", "--json"]) == 0
    capsys.readouterr()
    before = (tmp_path / "p" / "model.safetensors").read_bytes()
    assert main(["prune", "lenet5", "--ratio", "0.6", "--out", "p", "-q"]) == 2
    assert "--overwrite" in _error_line(capsys.readouterr().err)
    assert (tmp_path / "p" / "model.safetensors").read_bytes() == before
    assert (
        main(["prune", "lenet5", "--ratio", "0.6", "--out", "p", "-q", "--overwrite", "--json"])
        == 0
    )
    assert (tmp_path / "p" / "model.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no temporary leftovers


@pytest.mark.parametrize(
    "argv, message",
    [
        (["analyze", "nosuchmodel", "--input-shape", "1,3,8,8"], "nosuchmodel"),
        (
            ["profile", "torchvision:nosuchnet", "--input-shape", "1,3,8,8", "--no-latency"],
            "nosuchnet",
        ),
        (["prune", "nosuchmodel", "--ratio", "0.5", "--out", "o"], "nosuchmodel"),
        (["prune", "lenet5", "--ratio", "0.5", "--importance", "l7", "--out", "o"], "l7"),
        (["prune", "lenet5", "--ratio", "0.5", "--input-shape", "1,3,8,8", "--out", "o"], ""),
        (["prune", "lenet5", "--ratio", "0.5", "--override", "fc9=0.1", "--out", "o"], "fc9"),
        (["prune", "lenet5", "--ratio", "0.5", "--override", "fc1", "--out", "o"], "NAME=RATIO"),
        (["prune", "lenet5", "--ratio", "0.5", "--override", "fc1=1", "--out", "o"], "[0, 1)"),
        (["prune", "lenet5", "--sparsity", "0.5", "--override", "fc1=0", "--out", "o"], "ignore"),
        (["prune", "lenet5", "--sparsity", "0.5", "--round-to", "8", "--out", "o"], "--round-to"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(argv, message, tmp_path, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in _error_line(captured.err)
    assert "Traceback" not in captured.err
    assert list(tmp_path.iterdir()) == []


def test_missing_input_shape_explains_the_flag(tmp_path, capsys):
    (tmp_path / "net.py").write_text(
        "import torch\n\ndef build():\n    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))\n"
    )
    assert main(["analyze", "net.py:build"]) == 2
    assert "--input-shape" in _error_line(capsys.readouterr().err)
    assert main(["analyze", "net.py:build", "--input-shape", "1,4"]) == 0


def test_missing_data_for_calibration_exits_2(tmp_path, capsys):
    argv = [
        "prune",
        "lenet5",
        "--ratio",
        "0.5",
        "--data",
        "fashion-mnist",
        "--data-root",
        str(tmp_path / "none"),
        "--out",
        "o",
    ]
    assert main(argv) == 2
    assert "Fashion-MNIST not found" in _error_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_prune_sparsity_and_patterns_save_masked_models(tmp_path, capsys):
    import prunekit
    from prunekit.unstructured import masks_of, sparsity_report

    assert main(["prune", "lenet300", "--sparsity", "0.9", "--out", "s90", "-q", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sparsity"] == pytest.approx(0.9, abs=1e-3) and summary["scope"] == "global"
    after = summary["after"]  # DESIGN 5: sparse MACs count the nonzeros
    assert after["nonzero_macs"] == pytest.approx(0.1 * after["macs"], rel=0.01)
    assert main(["profile", "s90", "--no-latency"]) == 0
    assert "nonzero MACs" in capsys.readouterr().out
    model = prunekit.load(tmp_path / "s90")
    assert masks_of(model) and sparsity_report(model).sparsity == pytest.approx(0.9, abs=1e-3)

    assert main(["prune", "lenet300", "--pattern", "2:4", "--out", "p24", "-q"]) == 0
    weight = prunekit.load(tmp_path / "p24").fc1.weight.detach()  # [out, in]: groups along in
    assert int((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1).max()) <= 2

    assert main(["prune", "lenet300", "--out", "none", "-q"]) == 2  # no goal at all
    assert "exactly one" in _error_line(capsys.readouterr().err)
    assert main(["prune", "lenet300", "--ratio", "0.5", "--pattern", "2:4", "--out", "x"]) == 2
    assert not (tmp_path / "none").exists() and not (tmp_path / "x").exists()


def test_a_saved_exported_graph_fallback_is_a_model_for_every_command(tmp_path, capsys):
    """Pruned code that cannot run at the new sizes (a fixed `view(-1, 16 * 4)`) comes back as
    the exported graph; its save is profiled, analysed and pruned again like any model."""
    (tmp_path / "fixedview.py").write_text(
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv, self.fc = nn.Conv2d(1, 16, 3), nn.Linear(16 * 4, 2)\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.conv(x).relu().view(-1, 16 * 4))\n"
        "def build():\n"
        "    return Net()\n"
    )
    spec = f"{tmp_path / 'fixedview.py'}:build"
    assert main(["prune", spec, "--input-shape", "1,1,4,4", "--ratio", "0.5", "--out", "fb"]) == 0
    assert "exported graph" in capsys.readouterr().err
    assert main(["profile", "fb", "--no-latency", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] > 0
    assert main(["analyze", "fb"]) == 0
    assert main(["prune", "fb", "--ratio", "0.5", "--out", "fb2", "-q"]) == 0
