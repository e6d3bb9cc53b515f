"""`prunekit sensitivity` and `prunekit compare`: tables, JSON, output directories with plots."""

from __future__ import annotations

import json

import pytest

from prunekit.cli.main import main

NET = """
from torch import nn

def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
"""


@pytest.fixture(autouse=True)
def _workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(NET)


ARGS = ["sensitivity", "net.py:build", "--input-shape", "1,1,8,8", "--data", "digits", "-q"]


def test_prints_a_table_and_writes_json_and_plot(tmp_path, capsys):
    assert main([*ARGS, "--ratios", "0.5", "--batches", "1", "--out", "sens"]) == 0
    assert "drop@0.5" in capsys.readouterr().out
    doc = json.loads((tmp_path / "sens" / "sensitivity.json").read_text())
    assert doc["ratios"] == [0.5] and doc["groups"][0]["key"].startswith("1.")
    assert (tmp_path / "sens" / "sensitivity.png").stat().st_size > 0

    assert main([*ARGS, "--batches", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metric_name"] == "accuracy"


def test_bad_usage_exits_2_and_writes_nothing(tmp_path, capsys):
    assert main([*ARGS, "--ratios", "1.2", "--out", "sens"]) == 2
    assert main(["sensitivity", "net.py:build", "--input-shape", "1,1,8,8"]) == 2  # no --data
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("mine")
    assert main([*ARGS, "--out", "full"]) == 2
    assert not (tmp_path / "sens").exists()
    assert (tmp_path / "full" / "x.txt").read_text() == "mine"


def test_compare_prints_the_grid_and_writes_the_front(tmp_path, capsys):
    argv = ["compare", "net.py:build", "--input-shape", "1,1,8,8", "--data", "digits", "-q"]
    argv += ["--criteria", "l2", "--budgets", "0.5", "--batches", "1", "--out", "grid"]
    assert main(argv) == 0
    assert "*front" in capsys.readouterr().out
    doc = json.loads((tmp_path / "grid" / "compare.json").read_text())
    assert len(doc["rows"]) == 2  # local and global
    assert (tmp_path / "grid" / "compare.png").stat().st_size > 0
    assert main([*argv[:6], "--criteria", "nope", "-q"]) == 2


def test_prune_to_an_accuracy_drop(tmp_path, capsys):
    argv = ["prune", "net.py:build", "--input-shape", "1,1,8,8", "--target-accuracy-drop", "5"]
    assert main([*argv, "--out", "acc", "-q"]) == 2  # accuracy needs --data
    assert "--data" in capsys.readouterr().err and not (tmp_path / "acc").exists()
    argv += ["--data", "digits", "--eval-batches", "2", "--out", "acc", "--json", "-q"]
    assert main(argv) == 0
    reached = json.loads(capsys.readouterr().out)["report"]["target"]
    assert reached["target"] == "accuracy_drop" and reached["bound"] == 5
    assert 100 * (reached["baseline_accuracy"] - reached["accuracy"]) <= 5
    assert reached["macs_kept"] < 1 and len(reached["rounds"]) > 1
