"""The native kernels build once, are cached, and their absence falls back cleanly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.sparse import SparseLinear, _native


def test_disabled_or_unbuildable_native_kernels_report_why(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNEKIT_NO_NATIVE", "1")
    lib, why = _native._load()
    assert lib is None and "PRUNEKIT_NO_NATIVE" in why
    monkeypatch.delenv("PRUNEKIT_NO_NATIVE")
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    lib, why = _native._load()
    assert lib is None and "could not build" in why
    assert not list(tmp_path.rglob("*.so"))  # nothing half-written left in the cache


def test_a_fresh_cache_compiles_and_the_next_load_reuses_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    lib, why = _native._load()
    assert lib is not None, why
    built = list(tmp_path.rglob("libpksparse.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    lib2, _ = _native._load()
    assert lib2 is not None and built[0].stat().st_mtime_ns == stamp


def test_convert_without_native_kernels_uses_torch(monkeypatch):
    monkeypatch.setattr(_native, "_state", {"lib": None, "status": "disabled for this test"})
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        model[0].weight.mul_(torch.rand(16, 32) < 0.1)
    report = pk.sparse.convert(model, torch.randn(2, 32), measure=False)
    assert report.converted == ["0"] and model[0].kernel == "torch_csr"
    assert report.native == "disabled for this test"
    with pytest.raises(ValueError, match="unavailable"):
        SparseLinear(torch.zeros(2, 2), kernel="native")
