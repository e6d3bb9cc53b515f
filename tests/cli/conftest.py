"""Every command-line test runs in its own empty directory, without PRUNEKIT_DEBUG (which would
turn the one-line errors the tests read into tracebacks)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PRUNEKIT_DEBUG", raising=False)
