"""`prunekit export`: artefacts from a pruned save or a spec, the table, JSON, and exit codes."""

from __future__ import annotations

import json

import pytest

from prunekit.cli.main import main


@pytest.fixture
def pruned(capsys) -> str:
    assert main(["prune", "lenet5", "--ratio", "0.5", "--out", "p", "-q"]) == 0
    capsys.readouterr()
    return "p"


def test_export_a_pruned_save_to_onnx_prints_the_check(tmp_path, pruned, capsys):
    assert main(["export", pruned]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "p" / "model.onnx").is_file()
    assert "torch.onnx (dynamo)" in out and "yes, batch sizes 1, 3" in out
    assert "max rel error" in out


def test_export_json_for_each_torch_format(tmp_path, pruned, capsys):
    for fmt, name in (("torchscript", "model.pt"), ("exported-program", "model.pt2")):
        assert main(["export", pruned, "--format", fmt, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["verified"] is True and result["format"] == fmt
        assert result["max_rel_error"] <= 1e-4
        assert result["path"] == str(tmp_path / "p" / name)


def test_export_a_frozen_torchscript(tmp_path, pruned, capsys):
    assert main(["export", pruned, "--format", "torchscript", "--freeze"]) == 0
    out = capsys.readouterr().out
    assert "frozen" in out and "yes, batch sizes 1, 3" in out
    assert (tmp_path / "p" / "model.pt").is_file()


def test_export_a_spec_needs_out_and_honours_the_input_shape(tmp_path, capsys):
    argv = ["export", "lenet5", "--format", "torchscript", "--input-shape", "2,1,28,28"]
    assert main([*argv, "--out", "l5.pt", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["batch_sizes"] == [2, 3]
    assert (tmp_path / "l5.pt").is_file()
    assert main(argv) == 2
    assert "pass --out" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--format", "torchscript", "--quantize", "int8"],
        ["--format", "tflite"],
        ["--exporter", "script"],
        ["--input-shape", "1,3,28,28"],
        ["--rtol", "0"],
        ["--freeze"],
    ],
)
def test_bad_usage_exits_2_and_writes_nothing(tmp_path, pruned, capsys, argv):
    assert main(["export", pruned, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prunekit: error: ")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "model.safetensors",
        "prunekit.json",
    ]


def test_a_missing_directory_exits_2(capsys):
    assert main(["export", "no/such/dir"]) == 2
    assert capsys.readouterr().err.startswith("prunekit: error: ")


def test_a_failed_verification_exits_1_and_writes_nothing(tmp_path, pruned, capsys, monkeypatch):
    from prunekit.io import _export_inputs

    monkeypatch.setattr(_export_inputs, "errors", lambda want, got: (1.0, 0.5))
    assert main(["export", pruned, "--format", "torchscript"]) == 1
    err = capsys.readouterr().err
    assert "ExportVerificationError" in err and "relative 0.5" in err
    assert not (tmp_path / "p" / "model.pt").exists()
