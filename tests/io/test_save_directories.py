"""Save directories work on their own: example inputs found (the plan's, a dict's), specs that
rebuild from any working directory, and permissions like any file the user writes."""

from __future__ import annotations

import json
import os
import textwrap

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.cli.main import main
from prunekit.io import _atomic, read_metadata
from prunekit.models._build import absolute_spec
from prunekit.recipes._rundir import atomic_write_text

MODEL_FILE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 16)
            self.b = nn.Linear(16, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))


    class DictIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 16)
            self.b = nn.Linear(16, 4)

        def forward(self, batch):
            return self.b(torch.relu(self.a(batch["x"])))


    def build():
        return Net()


    def build_dict():
        return DictIn()
    """
)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """tmp_path/proj (the working directory) holding models/net.py; tmp_path/elsewhere exists."""
    root = tmp_path / "proj"
    (root / "models").mkdir(parents=True)
    (root / "models" / "net.py").write_text(MODEL_FILE)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(root)
    monkeypatch.delenv("PRUNEKIT_DEBUG", raising=False)
    return root


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


# --- example inputs -----------------------------------------------------------------------------


def test_a_save_with_only_a_plan_exports_with_the_plans_inputs(tmp_path):
    model = pk.models.build_model("lenet5")
    x = torch.randn(1, 1, 28, 28)
    result = pk.prune(model, x, ratio=0.5)
    save = pk.save(model, tmp_path / "l5", plan=result.plan, spec="lenet5")  # as the README
    assert read_metadata(save)["example_inputs"] is None
    out = pk.export(save, format="torchscript")
    assert out.path == save / "model.pt"
    assert out.verified and out.batch_sizes == [1, 3]  # the plan's input was at batch 1


def test_a_save_recording_no_inputs_at_all_still_asks_for_them(tmp_path):
    save = pk.save(nn.Linear(4, 2), tmp_path / "m")
    with pytest.raises(ValueError, match="records no example inputs"):
        pk.export(save, build=lambda: nn.Linear(4, 2))
    assert sorted(p.name for p in save.iterdir()) == ["model.safetensors", "prunekit.json"]


def test_dict_example_inputs_export_from_the_save(project):
    example = ({"x": torch.randn(2, 8)},)
    save = pk.save(_dict_model(), "dsave", spec="models/net.py:build_dict", example_inputs=example)
    out = pk.export(save, format="exported-program")
    assert out.verified and out.max_rel_error <= 1e-4 and out.path == save.resolve() / "model.pt2"


def test_cli_commands_run_on_a_save_with_dict_inputs(project, capsys):
    example = ({"x": torch.randn(2, 8)},)
    pk.save(_dict_model(), "dsave", spec="models/net.py:build_dict", example_inputs=example)
    assert main(["profile", "dsave", "--no-latency", "--json"]) == 0
    profile = json.loads(capsys.readouterr().out)
    assert profile["input_shape"] == [2, 8] and profile["macs"] == 2 * (8 * 16 + 16 * 4)
    assert main(["profile", "dsave", "--no-latency", "--batch-size", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["batch_size"] == 5
    assert main(["analyze", "dsave", "--json"]) == 0
    capsys.readouterr()
    assert main(["prune", "dsave", "--ratio", "0.5", "--out", "pruned", "-q"]) == 0
    capsys.readouterr()
    reloaded = pk.load("pruned")
    assert reloaded.a.out_features == 8
    assert read_metadata("pruned")["example_inputs"][0]["type"] == "dict"
    assert main(["export", "pruned", "--format", "exported-program", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verified"] is True


def _dict_model() -> nn.Module:
    torch.manual_seed(0)
    return pk.models.build_model("models/net.py:build_dict")


# --- specs that rebuild from anywhere ------------------------------------------------------------


def test_file_and_directory_specs_are_saved_absolute(project):
    project = project.resolve()
    save = pk.save(nn.Linear(8, 16), "s", spec="models/net.py:build")
    assert read_metadata(save)["spec"] == f"{project / 'models' / 'net.py'}:build"
    (project / "hfcfg").mkdir()
    (project / "hfcfg" / "config.json").write_text("{}")
    save = pk.save(nn.Linear(8, 16), "h", spec="hf:hfcfg")
    assert read_metadata(save)["spec"] == f"hf:{project / 'hfcfg'}"
    for spec in ("lenet5", "torchvision:resnet18", "hf:gpt2", "models/missing.py:build"):
        assert read_metadata(pk.save(nn.Linear(8, 16), "o", spec=spec))["spec"] == spec


def test_a_cli_save_of_a_relative_file_spec_works_from_another_directory(project, monkeypatch):
    argv = ["prune", "models/net.py:build", "--input-shape", "2,8", "--ratio", "0.5"]
    assert main([*argv, "--out", "r_net", "-q"]) == 0
    assert read_metadata("r_net")["spec"] == f"{project.resolve() / 'models' / 'net.py'}:build"
    monkeypatch.chdir(project.parent / "elsewhere")
    assert main(["profile", str(project / "r_net"), "--no-latency", "--json"]) == 0
    assert pk.load(project / "r_net").a.out_features == 8


def _relative_spec_save(project, name: str, spec: str):
    """A save made by an older prunekit, which stored the spec as given (relative)."""
    torch.manual_seed(0)
    save = pk.save(pk.models.build_model(f"{project}/models/net.py:build"), name)
    meta = json.loads((save / "prunekit.json").read_text())
    meta["spec"] = spec
    (save / "prunekit.json").write_text(json.dumps(meta))
    return save.resolve()


def test_an_older_save_with_a_relative_spec_loads_from_another_directory(project, monkeypatch):
    save = _relative_spec_save(project, "old", "models/net.py:build")
    want = pk.load(save).a.weight.clone()  # from the directory it was made in
    monkeypatch.chdir(project.parent / "elsewhere")
    assert torch.equal(pk.load(save).a.weight, want)  # found above the save directory
    inner = _relative_spec_save(project, project / "inner", "net.py:build")
    (inner / "net.py").write_text(MODEL_FILE)  # the model file kept in the save directory
    assert pk.load(inner).b.in_features == 16


def test_an_unresolvable_relative_spec_still_names_the_file(project, monkeypatch):
    save = _relative_spec_save(project, "lost", "nowhere/net.py:build")
    monkeypatch.chdir(project.parent / "elsewhere")
    with pytest.raises(ValueError, match="model file not found: nowhere/net.py"):
        pk.load(save)


def test_absolute_spec_only_rewrites_paths_that_exist(project):
    project = project.resolve()
    assert absolute_spec("models/net.py:build") == f"{project / 'models' / 'net.py'}:build"
    assert absolute_spec("net.py:build", base=project / "models") == absolute_spec(
        "models/net.py:build"
    )
    assert absolute_spec("models/net.py:build", base=project.parent) is None
    assert absolute_spec("hf:models") == f"hf:{project / 'models'}"
    assert absolute_spec("hf:models/net.py") is None  # a file that is not a config
    assert absolute_spec("vgg") is None and absolute_spec("torchvision:resnet18") is None


# --- permissions ---------------------------------------------------------------------------------


def test_saves_get_the_permissions_of_the_umask(tmp_path, umask_022):
    save = pk.save(nn.Linear(4, 2), tmp_path / "shared")
    assert _mode(save) == 0o755
    assert {p.name: _mode(p) for p in save.iterdir()} == {
        "model.safetensors": 0o644,
        "prunekit.json": 0o644,
    }
    compressed = pk.save(nn.Linear(4, 2), tmp_path / "packed", compress=True)
    assert _mode(compressed / "model.safetensors") == 0o644
    os.umask(0o027)
    private = pk.save(nn.Linear(4, 2), tmp_path / "group")
    assert _mode(private) == 0o750 and _mode(private / "model.safetensors") == 0o640


def test_run_files_and_cli_outputs_get_the_permissions_of_the_umask(tmp_path, umask_022):
    atomic_write_text(tmp_path / "state.json", "{}")
    assert _mode(tmp_path / "state.json") == 0o644
    assert _mode(_atomic.make_temp_dir(tmp_path, ".t-")) == 0o755
    fd, file = _atomic.make_temp_file(tmp_path, ".f-", ".tmp")
    os.close(fd)
    assert _mode(file) == 0o644
    out = tmp_path / "r"
    assert main(["prune", "lenet300", "--sparsity", "0.5", "--out", str(out), "-q"]) == 0
    assert _mode(out) == 0o755
    assert all(_mode(p) == 0o644 for p in out.iterdir())
    assert main(["export", str(out), "--format", "torchscript", "--json"]) == 0
    assert main(["report", str(out)]) == 0
    assert {p.name: _mode(p) for p in out.iterdir()} == {
        "model.safetensors": 0o644,
        "prunekit.json": 0o644,
        "model.pt": 0o644,
        "report.html": 0o644,
    }


def test_a_replaced_save_keeps_the_old_files_permissions(tmp_path, umask_022):
    save = pk.save(nn.Linear(4, 2), tmp_path / "m")
    note = save / "notes.txt"
    note.write_text("mine")
    note.chmod(0o600)
    pk.save(nn.Linear(4, 2), save)  # carries notes.txt over by hard link
    assert note.read_text() == "mine" and _mode(note) == 0o600
    assert _mode(save / "model.safetensors") == 0o644
