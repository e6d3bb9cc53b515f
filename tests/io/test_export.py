"""pk.export: ONNX / TorchScript / exported-program artefacts, checked in their own runtime."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.io import ExportVerificationError, export_latency, read_metadata


class Small(nn.Module):
    """Conv, BatchNorm, residual add, pooling and a classifier: the shapes pruning produces."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(y + self.conv2(y))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


class Drifts(nn.Module):
    """Its output changes on every call: no artefact can reproduce it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x) + self.calls


class DataDependent(nn.Module):
    """A branch on tensor values: torch.export refuses it, tracing takes the branch seen."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if x.abs().sum() >= 0:
            return self.fc(x)
        return -self.fc(x)


class Starred(nn.Module):
    """`*inputs` in forward: torch.jit.script cannot compile it, tracing can."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, *inputs):
        return self.fc(inputs[0])


def small(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = Small().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.bn1.running_mean.uniform_(-1, 1)
        model.bn1.running_var.uniform_(0.5, 2)
    return model, torch.randn(2, 3, 8, 8)


def test_onnx_is_verified_and_runs_at_any_batch_in_onnxruntime(tmp_path):
    model, x = small()
    result = pk.export(model, tmp_path / "small.onnx", example_inputs=x)
    assert result.verified and result.format == "onnx" and result.runtime == "onnxruntime"
    assert result.exporter == "torch.onnx (dynamo)" and result.dynamic_batch
    assert result.batch_sizes == [2, 3]
    assert result.max_rel_error <= 1e-4
    assert result.size_bytes == result.path.stat().st_size
    # independently of prunekit's check: a fresh ORT session at batch 5
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x5 = torch.randn(5, 3, 8, 8)
    (got,) = session.run(None, {session.get_inputs()[0].name: x5.numpy()})
    with torch.no_grad():
        want = model(x5).numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.onnx"]  # no staging left


def test_onnx_from_a_batch_of_one_still_has_a_dynamic_batch(tmp_path):
    model, x = small()
    result = pk.export(model, tmp_path / "m.onnx", example_inputs=x[:1])
    assert result.dynamic_batch and result.batch_sizes == [1, 3]


def test_a_float16_model_is_verified_at_its_own_precision(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval().half()  # fmt: skip
    out = pk.export(model, tmp_path / "half.onnx", example_inputs=torch.randn(1, 3, 16, 16).half())
    assert out.verified and 1e-4 < out.max_rel_error <= 1e-2  # float16 rounding, not a bug
    with pytest.raises(ExportVerificationError):
        pk.export(model, tmp_path / "strict.onnx", example_inputs=torch.randn(1, 3, 16, 16).half(), rtol=1e-4)  # fmt: skip


def test_onnx_falls_back_to_the_torchscript_exporter(tmp_path):
    torch.manual_seed(0)
    model = DataDependent().eval()
    result = pk.export(model, tmp_path / "dd.onnx", example_inputs=torch.randn(2, 4))
    assert result.exporter == "torch.onnx (torchscript)"
    assert len(result.attempts) == 1 and "dynamo" in result.attempts[0]
    assert result.verified and result.max_rel_error <= 1e-4 and result.batch_sizes == [2, 3]


def test_torchscript_scripts_when_possible_and_loads_with_jit(tmp_path):
    model, x = small()
    result = pk.export(model, tmp_path / "m.pt", format="torchscript", example_inputs=x)
    assert result.exporter == "torch.jit.script" and result.runtime == "torch.jit"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated in favour of torch.export
        loaded = torch.jit.load(str(result.path))
    x4 = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded(x4), model(x4), rtol=0, atol=1e-6)


def test_torchscript_traces_what_does_not_script(tmp_path):
    torch.manual_seed(0)
    result = pk.export(
        Starred().eval(), tmp_path / "s.pt", format="torchscript", example_inputs=torch.randn(2, 4)
    )
    assert result.exporter == "torch.jit.trace"
    assert "torch.jit.script" in result.attempts[0]
    assert result.verified and result.batch_sizes == [2, 3]


def test_a_frozen_torchscript_folds_batchnorm_and_still_matches(tmp_path):
    model, x = small()
    result = pk.export(
        model, tmp_path / "f.pt", format="torchscript", example_inputs=x, freeze=True
    )
    assert result.frozen and result.verified and result.max_rel_error <= 1e-4
    assert result.batch_sizes == [2, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(result.path))
        optimized = torch.jit.optimize_for_inference(torch.jit.load(str(result.path)))
    kinds = {node.kind() for node in loaded.graph.nodes()}
    assert "aten::batch_norm" not in kinds and "prim::GetAttr" not in kinds  # folded, inlined
    x4 = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(optimized(x4), model(x4), rtol=0, atol=1e-5)
    plain = pk.export(model, tmp_path / "p.pt", format="torchscript", example_inputs=x)
    assert not plain.frozen


def test_freeze_is_for_torchscript_only(tmp_path):
    model, x = small()
    with pytest.raises(ValueError, match="TorchScript exports only"):
        pk.export(model, tmp_path / "m.onnx", example_inputs=x, freeze=True)
    assert list(tmp_path.iterdir()) == []


def test_exported_program_loads_with_torch_export(tmp_path):
    model, x = small()
    result = pk.export(model, tmp_path / "m.pt2", format="exported-program", example_inputs=x)
    assert result.exporter == "torch.export" and result.dynamic_batch
    module = torch.export.load(str(result.path)).module()
    x4 = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(module(x4), model(x4), rtol=0, atol=1e-6)


def test_a_save_directory_gives_the_default_path_and_the_example_inputs(tmp_path):
    model, x = small()
    save = pk.save(model, tmp_path / "saved", example_inputs=(x[:1],))
    result = pk.export(save, format="torchscript", build=Small)
    assert result.path == save / "model.pt"
    assert result.batch_sizes == [1, 3]  # the recorded example input is at batch 1
    reloaded = pk.load(save, build=Small)  # the save itself is untouched (checksums hold)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))
    assert read_metadata(save)["kind"] == "module"


def test_a_failed_verification_writes_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "drift.onnx"
    target.write_bytes(b"earlier export")
    with pytest.raises(ExportVerificationError) as info:
        pk.export(Drifts(), target, example_inputs=torch.randn(2, 4), exporter="dynamo")
    assert info.value.max_rel_error > 1e-4
    assert "relative" in str(info.value)
    assert target.read_bytes() == b"earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drift.onnx"]


def test_the_users_model_keeps_its_mode_and_weights(tmp_path):
    model, x = small()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pk.export(model, tmp_path / "m.pt2", format="exported-program", example_inputs=x)
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _classifier() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A linear classifier that separates 3 well-spread prototypes (accuracy 1.0 in float32)."""
    gen = torch.Generator().manual_seed(0)
    prototypes = torch.randn(3, 64, generator=gen) * 3
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 3)).eval()
    with torch.no_grad():  # hidden units copy the input; the head scores the prototypes
        model[0].weight.copy_(torch.cat([torch.eye(64), -torch.eye(64)] * 2))
        model[0].bias.zero_()
        head = torch.cat([prototypes, -prototypes] * 2, dim=1) / 2
        model[2].weight.copy_(head)
        model[2].bias.copy_(-(prototypes**2).sum(1) / 2)
    batches = []
    for _ in range(4):
        y = torch.randint(0, 3, (32,), generator=gen)
        batches.append((prototypes[y] + 0.3 * torch.randn(32, 64, generator=gen), y))
    return model, batches


def test_int8_quantisation_is_smaller_and_its_accuracy_is_measured(tmp_path):
    model, data = _classifier()
    result = pk.export(
        model, tmp_path / "c.onnx", example_inputs=data[0][0][:2], quantize="int8", data=data
    )
    assert result.quantized_path == tmp_path / "c.int8.onnx" and result.quantized_path.is_file()
    assert result.quantized_size_bytes < result.size_bytes / 2
    assert result.accuracy == 1.0
    assert result.quantized_accuracy >= 0.95
    assert 0 < result.quantized_max_rel_error < 0.1  # int8 is close, not exact


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "tflite"}, "format must be one of"),
        ({"format": "torchscript", "quantize": "int8"}, "ONNX exports only"),
        ({"quantize": "int4"}, "quantize must be"),
        ({"exporter": "trace"}, "does not write onnx"),
        ({"rtol": 0}, "rtol"),
    ],
)
def test_bad_options_raise_value_errors(tmp_path, kwargs, message):
    model, x = small()
    with pytest.raises(ValueError, match=message):
        pk.export(model, tmp_path / "m.onnx", example_inputs=x, **kwargs)
    assert not any(tmp_path.iterdir())


def test_bad_inputs_raise_value_errors_and_write_nothing(tmp_path):
    model, x = small()
    with pytest.raises(ValueError, match="example_inputs="):
        pk.export(model, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="output path"):
        pk.export(model, example_inputs=x)
    with pytest.raises(ValueError, match="does not run on the example inputs"):
        pk.export(model, tmp_path / "m.onnx", example_inputs=torch.randn(2, 5, 8, 8))
    with pytest.raises(TypeError, match="nn.Module"):
        pk.export(42, tmp_path / "m.onnx", example_inputs=x)
    assert not any(tmp_path.iterdir())
    save = pk.save(model, tmp_path / "saved")  # no example inputs recorded
    with pytest.raises(ValueError, match="records no example inputs"):
        pk.export(save, build=Small)
    with pytest.raises(ValueError, match="file of the prunekit save"):
        pk.export(model, save / "prunekit.json", format="torchscript", example_inputs=x)


def test_export_latency_reports_medians_and_a_speedup(tmp_path):
    model, x = small()
    a = pk.export(model, tmp_path / "a.onnx", example_inputs=x).path
    b = tmp_path / "b.onnx"
    shutil.copy(a, b)
    stats = export_latency(a, x, baseline=b, runs=3, warmup=1)
    assert stats["runtime"] == "onnxruntime" and stats["threads"] == 1
    assert stats["batch_size"] == 2 and stats["runs"] == 3
    assert stats["ms"] > 0 and stats["baseline_ms"] > 0
    assert stats["speedup"] == pytest.approx(stats["baseline_ms"] / stats["ms"])
    (tmp_path / "a.pt2").write_bytes(b"")
    with pytest.raises(ValueError, match="not a onnx file"):
        export_latency(a, x, baseline=tmp_path / "a.pt2", runs=1)


def test_onnx_notes_channel_counts_that_cpu_kernels_handle_slowly(tmp_path):
    torch.manual_seed(0)
    odd = nn.Sequential(nn.Conv2d(3, 20, 3), nn.ReLU(), nn.Conv2d(20, 24, 3)).eval()
    x = torch.randn(2, 3, 8, 8)
    result = pk.export(odd, tmp_path / "odd.onnx", example_inputs=x)
    assert len(result.notes) == 1
    assert "1 of 2 convolutions" in result.notes[0] and "round_to=8" in result.notes[0]
    aligned = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 24, 3)).eval()
    assert pk.export(aligned, tmp_path / "even.onnx", example_inputs=x).notes == []


def test_an_exported_program_save_keeps_its_own_file(tmp_path):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(2, 4)
    batch = torch.export.Dim("batch")
    save = pk.save(torch.export.export(mlp, (x,), dynamic_shapes=({0: batch},)), tmp_path / "ep")
    result = pk.export(save, format="exported-program")
    assert result.path == save / "model.exported.pt2" and result.batch_sizes == [2, 3]
    with torch.no_grad():
        assert torch.allclose(pk.load(save)(x), mlp(x), atol=1e-6)  # model.pt2 intact


def test_the_latency_baseline_is_the_dense_stage_or_the_rebuilt_architecture(tmp_path):
    from prunekit.io.export import _baseline_model, _source

    torch.manual_seed(0)
    x = torch.randn(1, 1, 28, 28)
    dense = pk.build_model("lenet5").eval()
    result = pk.prune(pk.build_model("lenet5").eval(), x, ratio=0.5)
    run_dir = pk.save(result.model, tmp_path / "run", plan=result.plan, example_inputs=(x,))

    def params(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    rebuilt = _baseline_model(_source(run_dir, None, None), None)
    assert params(rebuilt) == params(dense) > params(result.model)
    pk.save(dense, run_dir / "stages" / "dense")  # what `prunekit run` keeps
    stage = _baseline_model(_source(run_dir, None, None), None)
    assert all(torch.equal(a, b) for a, b in zip(stage.parameters(), dense.parameters()))
    assert _baseline_model(_source(result.model, x, None), None) is None


class Keywords(nn.Module):
    """Keyword inputs: a tensor (`mask`) and a constant that changes the output structure."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x, mask=None, as_dict: bool = False):
        y = self.fc(x)
        if mask is not None:
            y = y * mask
        return {"logits": y, "total": y.sum(-1)} if as_dict else y


@pytest.mark.parametrize(
    ("fmt", "exporter"),
    [("onnx", "dynamo"), ("torchscript", "trace"), ("exported-program", "auto")],
)
def test_keyword_inputs_are_exported_and_checked(tmp_path, fmt, exporter):
    torch.manual_seed(0)
    x, mask = torch.randn(2, 4), torch.rand(2, 3)
    result = pk.export(
        Keywords().eval(),
        tmp_path / {"onnx": "k.onnx", "torchscript": "k.pt", "exported-program": "k.pt2"}[fmt],
        format=fmt,
        exporter=exporter,
        example_inputs=x,
        example_kwargs={"mask": mask, "as_dict": True},
    )
    assert result.verified and result.batch_sizes == [2, 3] and result.max_rel_error <= 1e-4
