"""pk.save / pk.load round trips: outputs, specs, plans, tied weights, dtypes, metadata."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import prunekit as pk
import prunekit.models
import prunekit.structured
from prunekit.io import read_metadata
from prunekit.structured.plan import Plan, PlanGroup


class Net(nn.Module):
    def __init__(self, hidden: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(4 * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x))).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x):
        return self.head(self.emb(x))


X = torch.randn(2, 3, 4, 4)


def trained_net() -> Net:
    """A Net whose every parameter and buffer differs from a fresh one."""
    torch.manual_seed(1)
    net = Net()
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5)
    return net.eval()


def test_round_trip_with_build_gives_identical_outputs(tmp_path):
    net = trained_net()
    path = pk.save(net, tmp_path / "net", metadata={"accuracy": 0.91}, example_inputs=(X,))
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "prunekit.json"]
    loaded = pk.load(path, build=Net)
    assert not loaded.training
    assert torch.equal(loaded(X), net(X))
    for name, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_round_trip_from_the_stored_spec(tmp_path, monkeypatch):
    built: list[str] = []

    def build_model(spec, **kw):
        built.append(spec)
        return Net()

    monkeypatch.setattr(prunekit.models, "build_model", build_model, raising=False)
    monkeypatch.setattr(prunekit.models, "spec_of", lambda m: "tiny-net", raising=False)
    net = trained_net()
    path = pk.save(net, tmp_path / "net")
    assert read_metadata(path)["spec"] == "tiny-net"
    loaded = pk.load(path)
    assert built == ["tiny-net"]
    assert torch.equal(loaded(X), net(X))

    pk.save(net, tmp_path / "explicit", spec="my-spec")  # the argument wins over spec_of
    assert read_metadata(tmp_path / "explicit")["spec"] == "my-spec"


def test_round_trip_of_a_builtin_model_spec(tmp_path):
    build_model = getattr(prunekit.models, "build_model", None)
    if build_model is None:
        pytest.skip("prunekit.models.build_model not available yet")
    model = build_model("lenet300").eval()
    x = torch.randn(2, 1, 28, 28)
    loaded = pk.load(pk.save(model, tmp_path / "m", spec="lenet300"))
    assert torch.equal(loaded(x), model(x))


def shrink_fc1(model: nn.Module, plan: Plan) -> None:
    """Stand-in for prunekit.structured.apply: keep the planned fc1 neurons."""
    keep = torch.tensor(plan.groups[0].keep)
    fc1, fc2 = model.fc1, model.fc2
    new1 = nn.Linear(fc1.in_features, len(keep))
    new2 = nn.Linear(len(keep), fc2.out_features)
    with torch.no_grad():
        new1.weight.copy_(fc1.weight[keep])
        new1.bias.copy_(fc1.bias[keep])
        new2.weight.copy_(fc2.weight[:, keep])
        new2.bias.copy_(fc2.bias)
    model.fc1, model.fc2 = new1, new2


def test_plan_is_stored_and_replayed_before_loading(tmp_path, monkeypatch):
    replayed: list[Plan] = []

    def apply(model, plan):
        replayed.append(plan)
        shrink_fc1(model, plan)

    monkeypatch.setattr(prunekit.structured, "apply", apply, raising=False)
    plan = Plan(groups=[PlanGroup(key="fc1:out", size=6, keep=[0, 2, 5], members=["fc1.weight:0"])])
    net = trained_net()
    shrink_fc1(net, plan)
    path = pk.save(net, tmp_path / "pruned", plan=plan)
    assert read_metadata(path)["plan"] == plan.to_dict()

    loaded = pk.load(path, build=Net)
    assert replayed == [plan]
    assert loaded.fc1.out_features == 3
    assert torch.equal(loaded(X), net(X))

    pk.save(net, tmp_path / "as_dict", plan=plan.to_dict())  # a plan dict is accepted too
    assert read_metadata(tmp_path / "as_dict")["plan"] == plan.to_dict()


def test_tied_weights_round_trip_stay_tied(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    path = pk.save(model, tmp_path / "tied")
    meta = read_metadata(path)
    assert meta["tied"] == {"head.weight": "emb.weight"}
    assert set(meta["tensors"]) == {"emb.weight", "head.weight"}
    loaded = pk.load(path, build=Tied)
    assert loaded.head.weight is loaded.emb.weight
    assert torch.equal(loaded.emb.weight, model.emb.weight)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(loaded(ids), model(ids))


def test_dtype_and_train_mode_are_kept(tmp_path):
    net = trained_net().to(torch.bfloat16).train()
    loaded = pk.load(pk.save(net, tmp_path / "bf16"), build=Net)
    assert loaded.training
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    assert loaded.bn.running_mean.dtype == torch.bfloat16
    assert loaded.bn.num_batches_tracked.dtype == torch.int64
    assert torch.equal(loaded.eval()(X.bfloat16()), net.eval()(X.bfloat16()))


def test_submodules_keep_their_own_train_or_eval_mode(tmp_path):
    net = trained_net().train()
    net.bn.eval()  # frozen BatchNorm in a model being fine-tuned
    loaded = pk.load(pk.save(net, tmp_path / "frozen"), build=Net)
    assert {n: m.training for n, m in loaded.named_modules()} == {
        n: m.training for n, m in net.named_modules()
    }
    assert read_metadata(tmp_path / "frozen")["modes"] == {"bn": False}

    def branches() -> nn.Sequential:
        return nn.Sequential(nn.Sequential(nn.Dropout(), nn.Dropout()), nn.Dropout())

    nested = branches().eval()
    nested[0].train()
    nested[0][1].eval()  # back to the root's mode inside a branch that differs
    again = pk.load(pk.save(nested, tmp_path / "nested"), build=branches)
    assert [m.training for m in again.modules()] == [False, True, True, False, False]


def test_saves_without_modes_load_in_the_root_mode(tmp_path):
    path = pk.save(trained_net().train(), tmp_path / "old")
    meta = path / "prunekit.json"
    document = json.loads(meta.read_text())
    document.pop("modes", None)  # a save from before modes were recorded
    meta.write_text(json.dumps(document))
    assert all(m.training for m in pk.load(path, build=Net).modules())


def test_metadata_document_is_complete_json(tmp_path):
    path = pk.save(
        trained_net(),
        tmp_path / "net",
        metadata={"metrics": {"accuracy": 0.9}, "masks": None},
        example_inputs=(X, 3),
    )
    doc = json.loads((path / "prunekit.json").read_text())
    assert doc == read_metadata(path)
    assert doc["format"] == "prunekit-model" and doc["format_version"] == 1
    assert doc["kind"] == "module" and doc["prunekit_version"] == pk.__version__
    assert doc["metadata"] == {"metrics": {"accuracy": 0.9}, "masks": None}
    assert doc["example_inputs"] == [{"shape": [2, 3, 4, 4], "dtype": "float32"}, {"value": 3}]
    assert doc["tensors"]["fc1.weight"] == {"shape": [6, 64], "dtype": "float32"}
    assert doc["files"]["model.safetensors"]["bytes"] == (path / "model.safetensors").stat().st_size
    assert pk.load(path / "prunekit.json", build=Net).fc1.out_features == 6  # a file in the save


def test_missing_spec_asks_for_build(tmp_path, monkeypatch):
    monkeypatch.setattr(prunekit.models, "spec_of", lambda m: None, raising=False)
    path = pk.save(trained_net(), tmp_path / "net")
    assert read_metadata(path)["spec"] is None
    with pytest.raises(ValueError, match="build="):
        pk.load(path)


def test_architecture_mismatch_names_the_offenders(tmp_path):
    path = pk.save(trained_net(), tmp_path / "net")
    with pytest.raises(ValueError, match=r"shape mismatch: fc1\.bias.*fc1\.weight"):
        pk.load(path, build=lambda: Net(hidden=5))

    class Renamed(Net):
        def __init__(self) -> None:
            super().__init__()
            self.extra = nn.Linear(2, 2)

    with pytest.raises(ValueError, match=r"missing from the file: extra\.bias, extra\.weight"):
        pk.load(path, build=Renamed)
    with pytest.raises(ValueError, match=r"not in the model: bn\.bias"):
        pk.load(path, build=lambda: nn.Sequential())
    with pytest.raises(TypeError, match="nn.Module"):
        pk.load(path, build=lambda: "not a model")


def test_bad_arguments_write_nothing(tmp_path):
    with pytest.raises(TypeError, match="JSON-serialisable"):
        pk.save(trained_net(), tmp_path / "net", metadata={"tensor": torch.zeros(1)})
    with pytest.raises(TypeError, match="plan"):
        pk.save(trained_net(), tmp_path / "net", plan=[1, 2])
    with pytest.raises(TypeError, match="nn.Module"):
        pk.save({"weight": torch.zeros(1)}, tmp_path / "net")
    assert list(tmp_path.iterdir()) == []


def test_exported_program_round_trip(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    x = torch.randn(2, 4)
    program = torch.export.export(model, (x,))
    path = pk.save(program, tmp_path / "ep", metadata={"fallback": True})
    meta = read_metadata(path)
    assert meta["kind"] == "exported-program" and meta["metadata"] == {"fallback": True}
    assert meta["example_inputs"] == [{"shape": [2, 4], "dtype": "float32"}]
    assert sorted(p.name for p in path.iterdir()) == ["model.pt2", "prunekit.json"]
    loaded = pk.load(path)
    assert torch.equal(loaded(x), model(x))
    assert loaded.eval() is loaded and not loaded.training  # eval mode is baked in

    # the module of an ExportedProgram is re-exported when example inputs are given
    again = pk.load(pk.save(loaded, tmp_path / "ep2", example_inputs=(x,)))
    assert torch.equal(again(x), model(x))
    with pytest.raises(ValueError, match="example_inputs"):
        pk.save(loaded, tmp_path / "ep3")


def test_builder_kwargs_of_the_spec_round_trip(tmp_path):
    """A model built with builder kwargs (vgg at half width) is rebuilt with them on load."""
    from prunekit.models import build_model

    model = build_model("vgg", width=0.5).eval()
    pk.save(model, tmp_path / "half")
    again = pk.load(tmp_path / "half").eval()
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(again(x), model(x))


class _DictInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc, self.cls = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.cls(self.enc(batch["image"]).relu().mean((2, 3)))


def test_a_model_taking_a_dict_is_pruned_saved_and_loaded(tmp_path):
    torch.manual_seed(0)
    model, x = _DictInput().eval(), ({"image": torch.randn(1, 3, 8, 8)},)
    result = pk.prune(model, x, ratio=0.5)
    assert "dict([1, 3, 8, 8] float32)" in pk.trace(model, x).summary()
    path = pk.save(model, tmp_path / "dict", plan=result.plan, example_inputs=x)
    loaded = pk.load(path, build=_DictInput)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(*x), model(*x))
    again = pk.apply(_DictInput(), result.plan)  # rebuilt from the plan's recorded inputs
    assert again.model.enc.out_channels == model.enc.out_channels == 4


@pytest.mark.parametrize("given", ["latest", "none", "composed"])
def test_a_model_pruned_twice_saves_both_rounds(tmp_path, given):
    """Prune, (fine-tune), prune again, save with the latest result's plan, the composed one or
    none: the save replays both rounds on a freshly built model."""
    torch.manual_seed(0)
    model, x = Net(hidden=16).eval(), torch.randn(2, 3, 4, 4)
    first = pk.prune(model, x, ratio=0.5)
    second = pk.prune(model, x, ratio=0.5)
    assert model.fc1.out_features == 4
    plan = {"latest": second.plan, "none": None, "composed": first.plan.then(second.plan)}[given]
    pk.save(model, tmp_path / "m", plan=plan)
    again = pk.load(tmp_path / "m", build=lambda: Net(hidden=16))
    assert again.fc1.out_features == 4
    torch.testing.assert_close(again.eval()(x), model(x))


def test_trial_prunes_of_a_sensitivity_sweep_are_not_recorded(tmp_path):
    torch.manual_seed(0)
    model, x = Net(hidden=16).eval(), torch.randn(4, 3, 4, 4)
    pk.sensitivity(model, x, [(x, torch.tensor([0, 1, 2, 0]))], ratios=(0.5,), progress=False)
    pk.save(model, tmp_path / "m")  # unpruned: no plan to record
    assert read_metadata(tmp_path / "m")["plan"] is None
