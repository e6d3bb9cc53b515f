"""Files that are not what they claim fail with a clear ValueError and load nothing."""

from __future__ import annotations

import json
import pickle
import zipfile

import pytest
import torch
from torch import nn

import prunekit as pk


def build() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    return pk.save(build(), tmp_path / "m")


@pytest.fixture(autouse=True)
def no_unpickling(monkeypatch):
    """Loading a prunekit save must never reach an unpickler."""

    def forbidden(*args, **kwargs):
        raise AssertionError("prunekit tried to unpickle")

    real_torch_load = torch.load

    def restricted_only(*args, weights_only=None, **kwargs):
        if weights_only is not True:  # the restricted unpickler cannot run code; anything else can
            raise AssertionError("prunekit called torch.load without weights_only=True")
        return real_torch_load(*args, weights_only=True, **kwargs)

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(torch, "load", restricted_only)


def forget_checksum(path):
    """Drop the recorded size/hash so the safetensors reader itself must catch the damage."""
    doc = json.loads((path / "prunekit.json").read_text())
    doc["files"] = {}
    (path / "prunekit.json").write_text(json.dumps(doc))


def test_truncated_weights_are_detected(saved):
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        pk.load(saved, build=build)
    forget_checksum(saved)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        pk.load(saved, build=build)


def test_modified_weights_fail_the_checksum(saved):
    weights = saved / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        pk.load(saved, build=build)


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_pickle_renamed_to_safetensors_is_refused(saved, writer, monkeypatch):
    weights = saved / "model.safetensors"
    state = {k: v.clone() for k, v in build().state_dict().items()}
    if writer == "torch.save":
        torch.save(state, weights)
    else:
        monkeypatch.undo()  # writing needs the real pickle; loading is checked below
        weights.write_bytes(pickle.dumps({"a": 1}))
        monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(ValueError, match="never unpickles"):
        pk.load(saved, build=build)


def test_garbage_weights_are_refused(saved):
    (saved / "model.safetensors").write_bytes(b"\x00" * 64)
    forget_checksum(saved)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        pk.load(saved, build=build)


def test_bad_json_and_wrong_documents(saved):
    meta = saved / "prunekit.json"
    good = json.loads(meta.read_text())
    meta.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        pk.load(saved, build=build)
    with pytest.raises(ValueError, match="not valid JSON"):
        pk.io.read_metadata(saved)
    meta.write_text(json.dumps({"hello": "world"}))
    with pytest.raises(ValueError, match="not a prunekit model description"):
        pk.load(saved, build=build)
    meta.write_text(json.dumps({**good, "format_version": 99}))
    with pytest.raises(ValueError, match="upgrade prunekit"):
        pk.load(saved, build=build)
    meta.write_text(json.dumps({**good, "kind": "onnx"}))
    with pytest.raises(ValueError, match="unknown kind"):
        pk.load(saved, build=build)
    meta.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not a text file"):
        pk.load(saved, build=build)


def test_missing_pieces(saved, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        pk.load(tmp_path / "nowhere", build=build)
    (saved / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="model.safetensors is missing"):
        pk.load(saved, build=build)
    (saved / "prunekit.json").unlink()
    with pytest.raises(ValueError, match="prunekit.json is missing"):
        pk.load(saved, build=build)


def rewrite_member(archive_path, suffix, edit):
    with zipfile.ZipFile(archive_path) as z:
        members = [(info, z.read(info.filename)) for info in z.infolist()]
    with zipfile.ZipFile(archive_path, "w") as z:
        for info, data in members:
            z.writestr(info, edit(data) if info.filename.endswith(suffix) else data)


def test_exported_archives_needing_pickle_are_refused(tmp_path):
    program = torch.export.export(build().eval(), (torch.randn(1, 4),))
    path = pk.save(program, tmp_path / "ep")
    forget_checksum(path)

    def mark_pickled(data: bytes) -> bytes:
        config = json.loads(data)
        for payload in config["config"].values():
            payload["use_pickle"] = True
        return json.dumps(config).encode()

    rewrite_member(path / "model.pt2", "_weights_config.json", mark_pickled)
    with pytest.raises(ValueError, match="pickled object"):
        pk.load(path)

    (path / "model.pt2").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="not a valid torch.export archive"):
        pk.load(path)
