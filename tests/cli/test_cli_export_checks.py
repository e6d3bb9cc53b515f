"""`prunekit export` / `report` refuse bad output paths and data up front: exit 2, one error line,
nothing written (and the library does the same)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.cli.main import main

export_module = importlib.import_module("prunekit.io.export")  # the module, not pk.export


@pytest.fixture
def pruned(capsys) -> str:
    assert main(["prune", "lenet300", "--ratio", "0.5", "--out", "p", "-q"]) == 0
    capsys.readouterr()
    return "p"


@pytest.fixture
def no_export_work(monkeypatch):
    """Fail loudly (exit 1, not 2) if an export is attempted."""

    def refuse(*args, **kwargs):
        raise AssertionError("the export ran before the input was checked")

    monkeypatch.setattr(export_module, "_write_first_verified", refuse)


def _listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("prunekit: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--out", "e.txt", "--latency"], "e.txt does not end in .onnx"),
        (["--format", "exported-program", "--out", "e3.onnx"], "e3.onnx does not end in .pt2"),
        (["--format", "torchscript", "--out", "e.pt2"], "or choose format 'exported-program'"),
        (["--out", "model"], "name it model.onnx"),
        (["--out", "p/prunekit.json"], "file of the prunekit save"),
    ],
)
def test_an_out_path_of_another_format_is_refused_before_any_work(
    tmp_path, pruned, no_export_work, capsys, argv, message
):
    before = _listing(tmp_path)
    assert main(["export", pruned, *argv]) == 2
    assert message in _one_error_line(capsys.readouterr().err)
    assert _listing(tmp_path) == before


def test_an_out_directory_gets_the_default_file_name(tmp_path, pruned, capsys):
    (tmp_path / "artefacts").mkdir()
    assert main(["export", pruned, "--format", "torchscript", "--out", "artefacts"]) == 0
    capsys.readouterr()
    assert _listing(tmp_path / "artefacts") == ["model.pt"]


def test_data_that_does_not_fit_the_model_is_refused_before_any_work(
    tmp_path, pruned, no_export_work, capsys
):
    before = _listing(tmp_path)
    assert main(["export", pruned, "--data", "digits"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "data does not fit the model" in line and "(1, 8, 8) per sample" in line
    assert _listing(tmp_path) == before


def test_report_out_naming_a_directory_is_a_usage_error(tmp_path, pruned, capsys):
    before = _listing(tmp_path)
    for out in (pruned, "newdir/"):
        assert main(["report", pruned, "--out", out]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert "names a directory" in line and "report.html" in line
        assert ".tmp" not in line
    assert _listing(tmp_path) == before
    assert main(["report", pruned, "--out", "r/summary.html"]) == 0
    capsys.readouterr()
    assert (tmp_path / "r" / "summary.html").is_file()


# --- the same checks in the library ------------------------------------------------------------


def _small() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval(), torch.randn(2, 8)


def test_export_refuses_a_path_of_another_format(tmp_path, no_export_work):
    model, x = _small()
    with pytest.raises(ValueError, match=r"does not end in \.onnx"):
        pk.export(model, tmp_path / "m.txt", example_inputs=x)
    with pytest.raises(ValueError, match=r"does not end in \.pt,"):
        pk.export(model, tmp_path / "m.onnx", format="torchscript", example_inputs=x)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_data_that_does_not_fit(tmp_path, no_export_work):
    model, x = _small()
    data = [(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(ValueError, match=r"data does not fit the model: its inputs are \(5,\)"):
        pk.export(model, tmp_path / "m.onnx", example_inputs=x, data=data)
    with pytest.raises(ValueError, match="data yielded no batches"):
        pk.export(model, tmp_path / "m.onnx", example_inputs=x, data=[])
    assert list(tmp_path.iterdir()) == []


def test_export_measures_the_accuracy_of_data_that_fits(tmp_path):
    model, x = _small()
    inputs = torch.randn(6, 8)
    with torch.no_grad():
        labels = model(inputs).argmax(-1)
    result = pk.export(model, tmp_path / "m.onnx", example_inputs=x, data=[(inputs, labels)])
    assert result.accuracy == 1.0
