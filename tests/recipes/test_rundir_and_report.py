"""Output directory checks, atomic writes and the report table (no model needed)."""

from __future__ import annotations

import json
import os

import pytest

from prunekit.recipes._rundir import atomic_write_json, check_output_dir, default_run_dir
from prunekit.report import comparison_rows, human_bytes, human_count, load_report, summary_text


def test_check_output_dir_accepts_new_and_empty(tmp_path):
    assert check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # checking writes nothing
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty")


def test_check_output_dir_rejects(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(ValueError, match="is not a directory"):
        check_output_dir(tmp_path / "file" / "sub")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    with pytest.raises(ValueError, match="--overwrite"):
        check_output_dir(full)
    # --overwrite replaces prunekit outputs only, never a folder of other files.
    with pytest.raises(ValueError, match="did not write"):
        check_output_dir(full, overwrite=True)
    (full / "prunekit.json").write_text("{}")
    check_output_dir(full, overwrite=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_check_output_dir_unwritable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            check_output_dir(ro / "out")
    finally:
        ro.chmod(0o700)


def test_default_run_dir_is_unique(tmp_path):
    first = default_run_dir("job", tmp_path)
    first.mkdir()
    second = default_run_dir("job", tmp_path)
    assert second != first and second.name.startswith("job-")


def test_atomic_write_json(tmp_path):
    atomic_write_json(tmp_path / "r.json", {"a": (1, 2)})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


REPORT = {
    "recipe": "default",
    "model": {"spec": "vgg"},
    "data": {"name": "fashion-mnist"},
    "dense": {
        "accuracy": 0.925,
        "loss": 0.21,
        "params": 1_000_000,
        "nonzero_params": 1_000_000,
        "macs": 40_000_000,
        "latency_ms": 2.0,
        "size_bytes": 4_000_000,
        "batch_size": 1,
        "threads": 2,
    },
    "pruned": {
        "accuracy": 0.92,
        "loss": 0.23,
        "params": 480_000,
        "nonzero_params": 480_000,
        "macs": 20_000_000,
        "latency_ms": 1.0,
        "size_bytes": 1_900_000,
    },
    "prune": {
        "importance": "l2",
        "ratio": None,
        "target": {"macs": 0.5},
        "scope": "local",
        "verified": True,
        "max_error": 3e-7,
        "groups": 10,
        "groups_pruned": 8,
    },
    "timings": {"train": 100.0, "prune": 2.0, "total": 102.0},
    "environment": {"torch": "2.14.1", "seed": 0, "threads": 2},
}


def test_cache_entries_get_the_permissions_of_the_umask(tmp_path, monkeypatch):
    """A shared cache (PRUNEKIT_CACHE) is readable as the umask says: no private 0700 / 0600."""
    from torch import nn

    import prunekit
    from prunekit.recipes import _cache

    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    old = os.umask(0o027)
    try:
        _cache.store("lenet300", "k", lambda p: prunekit.save(nn.Linear(2, 2), p))
    finally:
        os.umask(old)
    modes = {
        p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")
    }
    assert modes == {
        "cache": 0o750,
        "cache/dense": 0o750,
        "cache/dense/lenet300-k": 0o750,  # nothing else: the staging directory is gone
        "cache/dense/lenet300-k/model.safetensors": 0o640,
        "cache/dense/lenet300-k/prunekit.json": 0o640,
    }


def test_comparison_rows():
    rows = {r[0]: r[1:] for r in comparison_rows(REPORT)}
    assert rows["accuracy"] == ("92.50%", "92.00%", "-0.50 pts")
    assert rows["params"] == ("1M", "480k", "-52.0% (2.08x)")
    assert rows["MACs"][2] == "-50.0% (2.00x)"
    assert rows["latency (batch 1, 2 threads)"][2] == "2.00x faster"
    assert "nonzero params" not in rows  # same as params for dense weights
    assert "nonzero MACs" not in rows


def test_comparison_rows_of_a_sparse_model_count_nonzero_macs():
    sparse = {**REPORT, "dense": {**REPORT["dense"], "nonzero_macs": 40_000_000}}
    sparse["pruned"] = {**REPORT["dense"], "nonzero_params": 100_000, "nonzero_macs": 4_000_000}
    rows = {r[0]: r[1:] for r in comparison_rows(sparse)}
    assert rows["MACs"][2] == "=" and rows["nonzero MACs"] == ("40M", "4M", "-90.0% (10.00x)")


def test_summary_text_and_load(tmp_path):
    text = summary_text(REPORT)
    assert "default: vgg on fashion-mnist" in text
    assert "verified (max error 3.0e-07)" in text
    assert "8 of 10 groups pruned" in text
    (tmp_path / "report.json").write_text(json.dumps(REPORT))
    assert load_report(tmp_path) == REPORT
    with pytest.raises(FileNotFoundError):
        load_report(tmp_path / "nope")


def test_dense_only_report():
    rows = comparison_rows({"dense": {"accuracy": 0.5, "params": 10}, "pruned": None})
    assert rows[0] == ("accuracy", "50.00%", "-", "-")


def test_human_units():
    assert human_count(1234567) == "1.23M"
    assert human_count(999) == "999"
    assert human_bytes(2_500_000) == "2.5 MB"
    assert human_bytes(None) == "-"
