"""Compressed storage: exact round trips, lossy modes keep zeros, pk.save/pk.load integration."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.sparse.storage import (
    PRESETS,
    Compression,
    _from_relative,
    _relative,
    decode_state,
    encode_state,
    kmeans_1d,
)


def pruned_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    fc = torch.randn(40, 50) * (torch.rand(40, 50) < 0.1)  # -0.0 where negatives were masked
    conv = torch.randn(8, 4, 3, 3) * (torch.rand(8, 4, 3, 3) < 0.3)
    bias = torch.randn(40)
    return {
        "fc.weight": fc,
        "fc.bias": bias,
        "fc.weight_mask": fc != 0,
        "conv.weight": conv,
        "bn.running_var": torch.rand(8) + 0.5,
        "bn.num_batches_tracked": torch.tensor(7),
        "half": torch.randn(6, 5).bfloat16(),
        "double": torch.randn(3, 3, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
        "flags": torch.rand(17) < 0.5,
        "tied.bias": bias,  # shares memory with fc.bias
    }


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.numpy().tobytes() == b.numpy().tobytes()


def as_numpy_safe(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


def test_lossless_restores_every_value_and_exact_every_byte():
    state = pruned_state()
    assert torch.signbit(state["fc.weight"][state["fc.weight"] == 0]).any()  # has -0.0
    for preset in ("lossless", "exact"):
        blob, description = encode_state(state, preset)
        json.dumps(description)  # plain JSON
        out = decode_state(blob, description)
        assert list(out) == list(state)
        for name, t in state.items():
            assert out[name].dtype == t.dtype and out[name].shape == t.shape, name
            assert torch.equal(out[name], t), (preset, name)
        exact = all(same_bytes(as_numpy_safe(out[n]), as_numpy_safe(t)) for n, t in state.items())
        assert exact == (preset == "exact")
    tensors = description["tensors"]
    assert tensors["fc.weight_mask"] == {"shape": [40, 50], "dtype": "bool", "mask_of": "fc.weight"}
    assert tensors["tied.bias"]["same_as"] == "fc.bias"
    assert out["tied.bias"] is out["fc.bias"]


@pytest.mark.parametrize("preset", ["fp16", "int8", "kmeans"])
def test_lossy_modes_keep_the_zeros_and_stay_close(preset):
    state = pruned_state()
    blob, description = encode_state(state, preset)
    out = decode_state(blob, description)
    for name in ("fc.weight", "conv.weight", "double"):
        a, b = state[name], out[name]
        assert torch.equal(a != 0, b != 0), name  # the sparsity pattern is exact
        error = float((a.double() - b.double()).abs().max() / a.double().abs().max())
        assert 0 < error < {"fp16": 1e-3, "int8": 1e-2, "kmeans": 0.1}[preset], (name, error)
    for name in ("fc.bias", "bn.running_var", "bn.num_batches_tracked", "flags"):
        assert torch.equal(out[name], state[name]), name  # 1-D and integer tensors stay exact
    if preset == "kmeans":
        assert len(torch.unique(out["fc.weight"][out["fc.weight"] != 0])) <= 2**5
        assert description["tensors"]["conv.weight"]["values"]["bits"] == 8


def test_sizes_shrink_with_each_mode():
    torch.manual_seed(1)
    state = {"w": torch.randn(200, 300) * (torch.rand(200, 300) < 0.08)}
    raw = state["w"].numel() * 4
    sizes = {p: len(encode_state(state, p)[0]) for p in ("lossless", "fp16", "int8", "kmeans")}
    assert sizes["lossless"] < raw / 5  # 8% density: positions + fp32 values
    assert sizes["kmeans"] < sizes["int8"] < sizes["fp16"] < sizes["lossless"]


@pytest.mark.parametrize("positions", ["bitmask", "relative", "dense"])
def test_each_position_coding_round_trips(positions):
    state = pruned_state(seed=2)
    options = Compression(positions=positions, codec="zlib")
    out = decode_state(*encode_state(state, options))
    for name, t in state.items():
        assert torch.equal(out[name], t), name
    kinds = {
        e.get("positions", {}).get("kind")
        for e in encode_state(state, options)[1]["tensors"].values()
    }
    assert kinds == ({None} if positions == "dense" else {None, positions})


def test_relative_indices_with_long_gaps():
    index = np.array([0, 1, 254, 255, 256, 1000, 1255, 5000])
    codes = _relative(index)
    assert np.array_equal(_from_relative(codes, 5001), index)
    assert np.array_equal(_from_relative(_relative(np.array([], dtype=np.int64)), 10), [])


def test_kmeans_finds_clusters():
    values = torch.cat([torch.full((50,), -1.0), torch.full((30,), 0.5), torch.full((20,), 2.0)])
    codebook, index = kmeans_1d(values + 0.01 * torch.randn(100), k=3, iters=20)
    torch.testing.assert_close(codebook.float(), torch.tensor([-1.0, 0.5, 2.0]), atol=0.01, rtol=0)
    assert torch.equal(torch.bincount(index), torch.tensor([50, 30, 20]))


def test_kmeans_saves_a_layer_pruned_to_nothing(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        model[2].weight.zero_()  # as a global sparsify can leave a small classifier
    path = pk.save(model, tmp_path / "empty", compress="kmeans")
    loaded = pk.load(
        path, build=lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    )
    assert int(loaded[2].weight.count_nonzero()) == 0
    assert loaded[0].weight.count_nonzero() == model[0].weight.count_nonzero()


def test_options_are_validated():
    assert Compression.resolve(True) == PRESETS["lossless"]
    assert Compression.resolve({"values": "kmeans", "fc_bits": 4}).fc_bits == 4
    with pytest.raises(ValueError, match="unknown compression preset"):
        Compression.resolve("zip")
    with pytest.raises(ValueError, match="unknown compression option"):
        Compression.resolve({"bitz": 3})
    with pytest.raises(ValueError, match="fc_bits"):
        Compression(fc_bits=9)
    with pytest.raises(TypeError, match="compress must be"):
        Compression.resolve(3.5)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(300, 32)
        self.fc = nn.Linear(32, 32)
        self.bn = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, 300, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x):
        return self.head(self.bn(torch.relu(self.fc(self.embed(x)))))


def pruned_model() -> Tied:
    torch.manual_seed(0)
    model = Tied()
    with torch.no_grad():
        model.fc.weight.mul_(torch.rand(32, 32) < 0.2)
        model.embed.weight.mul_(torch.rand(300, 32) < 0.2)
    model.fc.register_buffer("weight_mask", model.fc.weight != 0)
    return model.eval()


@pytest.fixture(autouse=True)
def no_unpickling(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("prunekit tried to unpickle")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)


def build() -> Tied:
    model = Tied()
    model.fc.register_buffer("weight_mask", torch.ones(32, 32, dtype=torch.bool))
    return model


@pytest.mark.parametrize("compress", [True, "exact", "fp16", "int8", "kmeans"])
def test_save_and_load_compressed(tmp_path, compress):
    model = pruned_model()
    plain = pk.save(model, tmp_path / "plain")
    path = pk.save(model, tmp_path / "packed", compress=compress)
    size = (path / "model.safetensors").stat().st_size
    assert size < (plain / "model.safetensors").stat().st_size / 2
    meta = pk.io.read_metadata(path)
    assert meta["compression"]["file_bytes"] == size
    loaded = pk.load(path, build=build)
    assert loaded.head.weight is loaded.embed.weight  # still tied
    x = torch.randint(0, 300, (5,))
    for name, t in model.state_dict().items():
        got = loaded.state_dict()[name]
        if compress in (True, "exact") or t.dim() < 2 or not t.is_floating_point():
            assert torch.equal(got, t), name
        else:
            assert torch.equal(got != 0, t != 0), name
    with torch.no_grad():
        ref, out = model(x), loaded(x)
    assert float((out - ref).abs().max() / ref.abs().max()) < (
        1e-6 if compress in (True, "exact") else 0.1
    )


def test_corruption_and_misuse_are_detected(tmp_path):
    model = pruned_model()
    path = pk.save(model, tmp_path / "m", compress="kmeans")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        pk.load(path, build=build)
    doc = json.loads((path / "prunekit.json").read_text())
    doc["files"] = {}
    (path / "prunekit.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="cannot be decoded|not a valid safetensors"):
        pk.load(path, build=build)
    with pytest.raises(ValueError, match="do not fit"):
        pk.load(pk.save(model, tmp_path / "n", compress=True), build=lambda: nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown compression preset"):
        pk.save(model, tmp_path / "bad", compress="zip")
    assert not (tmp_path / "bad").exists()
    program = torch.export.export(nn.Linear(3, 2).eval(), (torch.randn(1, 3),))
    with pytest.raises(ValueError, match="exported programs"):
        pk.save(program, tmp_path / "ep", compress=True)


def test_sparsified_model_round_trips_with_its_masks(tmp_path):
    from prunekit.unstructured import masks_of

    torch.manual_seed(0)
    model = pk.build_model("lenet300")
    pk.sparsify(model, sparsity=0.92, scope="global")
    masks = masks_of(model)
    path = pk.save(model, tmp_path / "m", compress="kmeans")
    description = pk.io.read_metadata(path)
    assert description["compression"]["options"]["values"] == "kmeans"
    loaded = pk.load(path)
    loaded_masks = masks_of(loaded)
    assert set(loaded_masks) == set(masks)
    for name, mask in masks.items():
        assert torch.equal(loaded_masks[name], mask)
        assert torch.equal(loaded.get_parameter(name) != 0, mask)
    plain = (pk.save(model, tmp_path / "plain") / "model.safetensors").stat().st_size
    assert (path / "model.safetensors").stat().st_size < plain / 40  # masks cost nothing


@pytest.mark.parametrize("preset", ["fp16", "int8", "kmeans"])
def test_lossy_modes_store_exactly_what_they_cannot_represent(preset):
    """A weight with values beyond float16's range or below its smallest step, or holding inf or
    NaN, is stored exactly: fp16 read 1e5 back as inf and 1e-9 as 0, int8's row scale turned a
    row holding inf into NaN."""
    torch.manual_seed(0)
    base = torch.randn(6, 8) * (torch.rand(6, 8) < 0.5)
    cases = {"huge": 1e5, "tiny": 1e-9, "inf": float("inf"), "nan": float("nan")}
    state = {"plain": base.clone()}
    for name, value in cases.items():
        state[name] = base.clone()
        state[name][0, 0] = value
    out = decode_state(*encode_state(state, preset))
    for name in cases:
        if preset != "fp16" and name in ("huge", "tiny"):
            continue  # int8 and k-means scale to the tensor's own range
        torch.testing.assert_close(out[name], state[name], rtol=0, atol=0, equal_nan=True)
    assert not torch.equal(out["plain"], state["plain"])  # the others are still coded lossily
    assert torch.isfinite(out["plain"]).all()
