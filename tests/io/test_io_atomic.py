"""Atomic saves: failures leave nothing behind and never damage an existing save."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.io import UnwritableLocationError, _atomic, _weights


def model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(4, 3)


def build() -> nn.Module:
    return nn.Linear(4, 3)


def fail_mid_write(monkeypatch):
    """Make the weights writer die after writing part of its file."""

    def broken(model, file):
        file.write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_weights, "write_weights", broken)


def test_failure_mid_save_leaves_nothing(tmp_path, monkeypatch):
    fail_mid_write(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        pk.save(model(0), tmp_path / "deep" / "er" / "m")
    assert list(tmp_path.iterdir()) == []  # no save, no temporary, no created parents


def test_failure_mid_save_keeps_the_existing_save(tmp_path, monkeypatch):
    first = model(0)
    path = pk.save(first, tmp_path / "m")
    fail_mid_write(monkeypatch)
    with pytest.raises(OSError):
        pk.save(model(1), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert torch.equal(pk.load(path, build=build).weight, first.weight)


def test_failed_swap_puts_the_old_save_back(tmp_path, monkeypatch):
    first = model(0)
    path = pk.save(first, tmp_path / "m")
    real_rename = os.rename

    def rename(src, dst):
        if ".tmp-" in os.fspath(src):  # moving the finished save into place
            raise OSError(5, "Input/output error")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="Input/output"):
        pk.save(model(1), path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert torch.equal(pk.load(path, build=build).weight, first.weight)


def test_resave_replaces_the_save_and_keeps_other_files(tmp_path):
    path = pk.save(model(0), tmp_path / "run")
    (path / "report.json").write_text("{}")
    (path / "plots").mkdir()
    (path / "plots" / "a.txt").write_text("plot")
    second = model(1)
    pk.save(second, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert torch.equal(pk.load(path, build=build).weight, second.weight)
    assert (path / "report.json").read_text() == "{}"
    assert (path / "plots" / "a.txt").read_text() == "plot"


def test_exported_save_replaces_module_save_without_stale_weights(tmp_path):
    path = pk.save(model(0), tmp_path / "m")
    program = torch.export.export(model(1), (torch.randn(1, 4),))
    pk.save(program, path)
    assert sorted(p.name for p in path.iterdir()) == ["model.pt2", "prunekit.json"]


def test_refuses_to_overwrite_foreign_directories_and_files(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(ValueError, match="not a prunekit save"):
        pk.save(model(0), foreign)
    assert [p.name for p in foreign.iterdir()] == ["cat.jpg"]

    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        pk.save(model(0), tmp_path / "file")

    with pytest.raises(ValueError, match="is a file, not a directory"):
        pk.save(model(0), tmp_path / "file" / "m")

    empty = tmp_path / "empty"
    empty.mkdir()
    assert pk.load(pk.save(model(0), empty), build=build).in_features == 4


def test_unwritable_location_is_one_clear_error(tmp_path, monkeypatch):
    def denied(dir=None, prefix=None, **kw):
        raise PermissionError(13, "Permission denied", dir)

    monkeypatch.setattr(_atomic.tempfile, "mkdtemp", denied)
    target = tmp_path / "new" / "m"
    with pytest.raises(UnwritableLocationError) as info:
        pk.save(model(0), target)
    assert isinstance(info.value, ValueError) and isinstance(info.value, PermissionError)
    message = str(info.value)
    assert str(target) in message and "Permission denied" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []  # the parent this call created is gone again
