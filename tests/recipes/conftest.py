"""Shared by the recipe tests: fake Fashion-MNIST, a private model cache, a scratch directory."""

from __future__ import annotations

import pytest


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Fake data in PRUNEKIT_DATA (64 train / 32 test images), PRUNEKIT_CACHE under tmp_path,
    and a fresh working directory `tmp_path / "work"` as the current directory."""
    from prunekit.data import write_idx_fixture

    data = write_idx_fixture(tmp_path / "data", n_train=64, n_test=32)
    monkeypatch.setenv("PRUNEKIT_DATA", str(data))
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PRUNEKIT_DEBUG", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work
