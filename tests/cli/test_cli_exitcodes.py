"""Exit codes and error lines of `prunekit`: 0 success, 1 failure, 2 bad usage/input, 130 Ctrl-C."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from prunekit import __version__
from prunekit.cli.main import main

COMMANDS = ("run", "analyze", "prune", "profile", "report")


def _listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("prunekit: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"prunekit {__version__}"


@pytest.mark.parametrize("argv", [["--help"], *[[c, "--help"] for c in COMMANDS]])
def test_help_has_examples(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    assert "prunekit" in out


def test_no_command_is_usage_error(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["analyze"], "the following arguments are required: MODEL"),
        (["analyze", "lenet5", "--input-shape", "1,a,3"], "bad input shape '1,a,3'"),
        (["analyze", "lenet5", "--input-shape", "1,1,x,28"], "bad input shape '1,1,x,28'"),
        (["analyze", "lenet5", "--input-shape", "0,1"], "bad input shape"),
        (["prune", "lenet5", "--ratio", "1.5", "--out", "x"], "--ratio: must be in (0, 1)"),
        (["prune", "lenet5", "--ratio", "half", "--out", "x"], "expected a number, got 'half'"),
        (["prune", "lenet5", "--sparsity", "1", "--out", "x"], "fraction of the weights zeroed"),
        (
            ["prune", "lenet5", "--target-macs", "0", "--out", "x"],
            "--target-macs: must be in (0, 1]",
        ),
        (["prune", "lenet5", "--out", "x"], "give exactly one of ratio"),
        (
            ["prune", "lenet5", "--ratio", "0.5", "--target-macs", "0.5", "--out", "x"],
            "not allowed with",
        ),
        (["prune", "lenet5", "--ratio", "0.5"], "--out"),
        (["profile", "lenet5", "--batch-size", "0"], "expected a positive integer"),
        (["run", "--set", "prune.ratoi=0.5"], "prune.ratoi: unknown key (did you mean 'ratio'?)"),
        (["run", "--set", "prune.target.macs=1.5"], "prune.target.macs: must be a fraction"),
        (["run", "nope"], "no built-in recipe 'nope'"),
        (["run", "missing.yaml"], "recipe file not found: missing.yaml"),
    ],
)
def test_bad_usage_exits_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert message in line
    assert captured.out == ""
    assert _listing(tmp_path) == []  # nothing written


def test_bad_recipe_file_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text("model: {spec: lenet5}\ntrain: {lr: fast}\n")
    assert main(["run", "r.yaml"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "recipe error: train.lr: expected a number, got 'fast'" in line
    assert _listing(tmp_path) == ["r.yaml"]


def test_unwritable_out_fails_before_any_work(tmp_path, capsys, monkeypatch):
    """A bad --out is reported at once (before building the model) and nothing is written."""
    import prunekit.recipes.tasks as tasks

    def boom(*args, **kwargs):  # would mean the model was built before the check
        raise AssertionError("model built before --out was checked")

    monkeypatch.setattr(tasks, "resolve_model", boom)
    (tmp_path / "file").write_text("x")
    before = _listing(tmp_path)
    assert main(["prune", "lenet5", "--ratio", "0.5", "--out", str(tmp_path / "file" / "out")]) == 2
    assert "is not a directory" in _one_error_line(capsys.readouterr().err)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    before = _listing(tmp_path)
    assert main(["prune", "lenet5", "--ratio", "0.5", "--out", str(full)]) == 2
    assert "--overwrite" in _one_error_line(capsys.readouterr().err)
    assert _listing(tmp_path) == before
    # --overwrite never replaces a folder that prunekit did not write.
    assert main(["prune", "lenet5", "--ratio", "0.5", "--out", str(full), "--overwrite"]) == 2
    assert "did not write" in _one_error_line(capsys.readouterr().err)
    assert main(["run", "--out", str(full), "--overwrite", "-q"]) == 2
    assert "did not write" in _one_error_line(capsys.readouterr().err)
    assert _listing(tmp_path) == before


def test_run_unwritable_out_writes_nothing(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["run", "--out", str(tmp_path / "file" / "run"), "-q"]) == 2
    assert "is not a directory" in _one_error_line(capsys.readouterr().err)
    assert _listing(tmp_path) == ["file"]


def test_not_a_saved_directory_exits_2(tmp_path, capsys):
    assert main(["profile", str(tmp_path)]) == 2
    assert "not a saved prunekit model" in _one_error_line(capsys.readouterr().err)


def test_resume_of_a_non_run_directory_exits_2(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "not a prunekit run directory" in _one_error_line(capsys.readouterr().err)
    assert main(["run", "default", "--resume", str(tmp_path)]) == 2
    assert "--resume DIR continues DIR" in _one_error_line(capsys.readouterr().err)


def _fail_with(monkeypatch, exc: BaseException) -> None:
    """Make `prunekit analyze` raise `exc` from inside the library call."""
    import prunekit.cli.analyze as analyze

    def failing(args):
        raise exc

    monkeypatch.setattr(analyze, "run", failing)


def test_operation_failure_exits_1_without_traceback(monkeypatch, capsys):
    monkeypatch.delenv("PRUNEKIT_DEBUG", raising=False)
    _fail_with(monkeypatch, RuntimeError("shapes do not match\nsecond line"))
    assert main(["analyze", "lenet5"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0] == "prunekit: error: RuntimeError: shapes do not match second line"
    assert "--debug" in lines[-1]


@pytest.mark.parametrize("how", ["flag", "global-flag", "env"])
def test_debug_shows_traceback(how, monkeypatch, capsys):
    _fail_with(monkeypatch, RuntimeError("kaboom"))
    argv = ["analyze", "lenet5"]
    if how == "flag":
        argv.append("--debug")
    elif how == "global-flag":
        argv.insert(0, "--debug")
    else:
        monkeypatch.setenv("PRUNEKIT_DEBUG", "1")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "kaboom" in err


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad value"),
        TypeError("bad type"),
        FileNotFoundError("no such file"),
        PermissionError("denied"),
    ],
)
def test_user_errors_from_the_library_exit_2(exc, monkeypatch, capsys):
    monkeypatch.delenv("PRUNEKIT_DEBUG", raising=False)
    _fail_with(monkeypatch, exc)
    assert main(["analyze", "lenet5"]) == 2
    assert _one_error_line(capsys.readouterr().err) == f"prunekit: error: {exc}"


def test_keyboard_interrupt_exits_130(monkeypatch, capsys):
    err = KeyboardInterrupt()
    err.add_note("continue with: prunekit run --resume runs/x")
    _fail_with(monkeypatch, err)
    assert main(["analyze", "lenet5"]) == 130
    out = capsys.readouterr().err
    assert out.startswith("prunekit: interrupted\n")
    assert "--resume runs/x" in out
    assert "Traceback" not in out


def test_console_script_and_module_entry_point():
    """The installed `prunekit` script: exit codes reach the shell, errors stay on one line."""
    script = Path(sys.executable).with_name("prunekit")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "prunekit.cli.main"]
    ok = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.strip() == f"prunekit {__version__}"
    bad = subprocess.run(
        [*argv, "prune", "lenet5", "--ratio", "2", "--out", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stdout == ""
    _one_error_line(bad.stderr)


def test_warnings_are_one_line_for_the_user(tmp_path, capsys):
    source = tmp_path / "recurrent.py"
    source.write_text(
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.rnn, self.fc = nn.GRU(8, 16, batch_first=True), nn.Linear(16, 2)\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.rnn(x)[0][:, -1])\n"
        "def build():\n"
        "    return Net()\n"
    )
    argv = ["prune", f"{source}:build", "--input-shape", "1,5,8", "--target-macs", "0.5"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "warning: target {'macs': 0.5} not reached" in err
    assert "UserWarning" not in err and "recurrent.py" not in err


def test_data_that_does_not_fit_the_model_is_a_usage_error(tmp_path, capsys):
    argv = ["prune", "lenet5", "--ratio", "0.5", "--importance", "taylor", "--data", "digits"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2  # 8x8 digits into a 28x28 LeNet
    line = _one_error_line(capsys.readouterr().err)
    assert "the digits data does not fit the model: its inputs are (1, 8, 8)" in line
    assert not (tmp_path / "out").exists()
