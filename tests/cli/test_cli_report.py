"""`prunekit report RUN_DIR`: HTML with embedded plots, --text, --json, and bad input."""

from __future__ import annotations

import json

from prunekit.cli.main import main

LAYERS_DENSE = {"": {"macs": 0}, "conv1": {"macs": 1000}, "fc": {"macs": 500}}
LAYERS_PRUNED = {"": {"macs": 0}, "conv1": {"macs": 400}, "fc": {"macs": 250}}
REPORT = {
    "recipe": "demo",
    "created": "2025-01-01T00:00:00",
    "model": {"spec": "lenet5", "input_shape": [1, 1, 28, 28]},
    "data": {"name": "fashion-mnist"},
    "dense": {
        "accuracy": 0.9,
        "params": 1000,
        "macs": 1500,
        "latency_ms": 1.0,
        "size_bytes": 4000,
        "layers": LAYERS_DENSE,
    },
    "pruned": {
        "accuracy": 0.89,
        "params": 500,
        "macs": 650,
        "latency_ms": 0.6,
        "size_bytes": 2000,
        "layers": LAYERS_PRUNED,
    },
    "prune": {
        "importance": "l2",
        "ratio": 0.5,
        "target": None,
        "scope": "local",
        "verified": True,
        "max_error": 1e-7,
    },
    "history": {
        "dense": {
            "epochs": [
                {"epoch": 1, "loss": 1.0, "accuracy": 0.5},
                {"epoch": 2, "loss": 0.5, "accuracy": 0.8},
            ]
        }
    },
    "timings": {"train": 10.0, "total": 10.0},
    "environment": {"torch": "2.x", "threads": 2},
}
PLAN = {"groups": [{"key": "conv1.weight:0", "size": 6, "keep": [0, 2, 4], "members": []}]}


def _run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps(REPORT))
    (run / "prunekit.json").write_text(json.dumps({"plan": PLAN}))
    return run


def test_report_writes_self_contained_html(tmp_path, capsys):
    run = _run_dir(tmp_path)
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "demo: lenet5 on fashion-mnist" in out and "report.html" in out
    page = (run / "report.html").read_text()
    assert page.startswith("<!doctype html>")
    assert page.count("<img") == 4  # costs, layers, groups, training
    assert "verified" in page and "-1.00 pts" in page
    assert "src='http" not in page  # nothing external


def test_report_text_and_json_write_nothing(tmp_path, capsys):
    run = _run_dir(tmp_path)
    assert main(["report", str(run), "--text"]) == 0
    assert "MACs" in capsys.readouterr().out
    assert main(["report", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recipe"] == "demo"
    assert not (run / "report.html").exists()


def test_report_out_file(tmp_path, capsys):
    run = _run_dir(tmp_path)
    assert main(["report", str(run), "--out", str(tmp_path / "x.html"), "-q"]) == 0
    assert (tmp_path / "x.html").is_file()
    (tmp_path / "f").write_text("")
    assert main(["report", str(run), "--out", str(tmp_path / "f" / "x.html")]) == 2


def test_report_of_a_non_run_directory_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no report found" in err[0]
    (tmp_path / "report.json").write_text("{not json")
    assert main(["report", str(tmp_path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
