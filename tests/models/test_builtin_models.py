"""prunekit.models: built-in architectures and MODEL spec resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import prunekit.models as pkm


def _macs(model: nn.Module, shape: tuple[int, ...]) -> float:
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(shape))
    return counter.get_total_flops() / 2


@pytest.mark.parametrize(
    "name", ["lenet300", "lenet5", "lenet5_caffe", "vgg", "resnet20", "vit_tiny"]
)
def test_builtins_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    model = pkm.build_model(name)
    assert pkm.input_shape(name) == (1, 1, 28, 28)
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    wide = pkm.build_model(name, num_classes=7, in_channels=3)
    assert wide(torch.randn(2, 3, 28, 28)).shape == (2, 7)


def test_known_sizes() -> None:
    params = {n: sum(p.numel() for p in pkm.build_model(n).parameters()) for n in pkm.list_models()}
    assert params["lenet300"] == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert params["lenet5"] == 61706
    # Han et al. 2015 Table 2: 431K weights (20*25 + 50*20*25 + 800*500 + 500*10, and biases)
    assert params["lenet5_caffe"] == 430_500 + 20 + 50 + 500 + 10
    assert params["resnet20"] == 272_186
    assert params["vgg"] == 2_751_466
    # patch embedding + class token + positions + 4 blocks (2 norms, qkv, proj, 2-layer MLP)
    block = 2 * 2 * 64 + (64 * 192 + 192) + (64 * 64 + 64) + (64 * 128 + 128) + (128 * 64 + 64)
    vit = (16 * 64 + 64) + 64 + 50 * 64 + 4 * block + 2 * 64 + (64 * 10 + 10)
    assert params["vit_tiny"] == vit


@pytest.mark.slow  # FlopCounterMode's first use imports a lot
def test_vgg_costs_about_21_9m_macs() -> None:
    macs = _macs(pkm.build_model("vgg"), (1, 1, 28, 28))
    assert abs(macs - 21.9e6) / 21.9e6 < 0.01


def test_resnet20_structure() -> None:
    model = pkm.build_model("resnet20")
    blocks = [m for m in model.modules() if isinstance(m, pkm.BasicBlock)]
    assert len(blocks) == 9
    projections = [b for b in blocks if not isinstance(b.shortcut, nn.Identity)]
    assert len(projections) == 2  # where 16 -> 32 and 32 -> 64 channels
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 18 + 2  # stem + 9 blocks x 2 + 2 projections


def test_other_image_sizes() -> None:
    assert pkm.build_model("lenet300", image_size=8)(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert pkm.build_model("vgg", image_size=8)(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="12x12"):
        pkm.build_model("lenet5", image_size=8)


def test_spec_recording() -> None:
    model = pkm.build_model("vgg", num_classes=5)
    assert pkm.spec_of(model) == "prunekit:vgg"
    assert pkm.spec_kwargs_of(model) == {"num_classes": 5}
    assert pkm.spec_of(pkm.build_model("prunekit:lenet5")) == "prunekit:lenet5"
    assert "_prunekit_spec" not in dict(model.named_buffers())
    plain = nn.Linear(2, 2)
    assert pkm.spec_of(plain) is None
    pkm.set_spec(plain, "my.py:f")
    assert pkm.spec_of(plain) == "my.py:f" and "_prunekit_spec" not in plain.state_dict()


def test_unknown_names_suggest_close_matches() -> None:
    with pytest.raises(
        ValueError, match=r"Did you mean vgg\?.*lenet300, lenet5, lenet5_caffe, resnet20, vgg"
    ):
        pkm.build_model("vgj")
    with pytest.raises(ValueError, match="resnet18"):
        pkm.build_model("torchvision:resnet1")
    with pytest.raises(ValueError, match="unknown model source"):
        pkm.build_model("nope:thing")
    with pytest.raises(ValueError, match="non-empty"):
        pkm.build_model("")


def test_torchvision_spec() -> None:
    model = pkm.build_model("torchvision:resnet18", num_classes=3)
    assert pkm.spec_of(model) == "torchvision:resnet18"
    assert model.fc.out_features == 3
    assert pkm.input_shape("torchvision:resnet18") == (1, 3, 224, 224)
    assert pkm.input_shape("timm:resnet18") is None


def test_file_spec(tmp_path: Path) -> None:
    source = tmp_path / "mymodel.py"
    source.write_text(
        "from torch import nn\n"
        "def build(width=4):\n"
        "    return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))\n"
        "def not_a_model():\n"
        "    return 3\n"
    )
    model = pkm.build_model(f"{source}:build", width=6)
    assert model[0].out_features == 6
    assert pkm.spec_of(model) == f"{source.resolve()}:build"
    with pytest.raises(ValueError, match="did you mean build"):
        pkm.build_model(f"{source}:buld")
    with pytest.raises(TypeError, match="not an nn.Module"):
        pkm.build_model(f"{source}:not_a_model")
    with pytest.raises(ValueError, match="model file not found") as info:
        pkm.build_model(f"{tmp_path / 'missing.py'}:build")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="names no function"):
        pkm.build_model(str(source))


def test_file_spec_imports_its_sibling_modules(tmp_path: Path) -> None:
    (tmp_path / "siblinglayers.py").write_text(
        "from torch import nn\ndef block(i, o):\n    return nn.Sequential(nn.Linear(i, o), nn.ReLU())\n"
    )
    (tmp_path / "siblingnet.py").write_text(
        "from torch import nn\nfrom siblinglayers import block\n"
        "def build():\n    return nn.Sequential(block(3, 5), nn.Linear(5, 2))\n"
    )
    model = pkm.build_model(f"{tmp_path / 'siblingnet.py'}:build")
    assert model[0][0].out_features == 5


def test_register_and_list(recwarn: pytest.WarningsRecorder) -> None:
    pkm.register("tiny_test_mlp", lambda: nn.Linear(4, 2), input_shape=(1, 4))
    try:
        assert "tiny_test_mlp" in pkm.list_models("tiny*")
        assert pkm.input_shape("tiny_test_mlp") == (1, 4)
        with pytest.warns(UserWarning, match="overwriting"):
            pkm.register("tiny_test_mlp", lambda: nn.Linear(4, 3))
        assert pkm.build_model("tiny_test_mlp").out_features == 3
    finally:
        pkm._build._REGISTRY.pop("tiny_test_mlp")
    assert pkm.list_models() == [
        "kws_dscnn",
        "lenet300",
        "lenet5",
        "lenet5_caffe",
        "resnet20",
        "vgg",
        "vit_tiny",
    ]


def test_timm_spec() -> None:
    pytest.importorskip("timm")
    model = pkm.build_model("timm:resnet18", num_classes=4)
    assert pkm.spec_of(model) == "timm:resnet18"
    with pytest.raises(ValueError, match="resnet18"):
        pkm.build_model("timm:resnet1")


@pytest.mark.slow  # importing transformers takes seconds
def test_hf_specs(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    model = pkm.build_model("hf:gpt2", n_layer=1, n_embd=16, n_head=2, vocab_size=50)
    assert isinstance(model, transformers.GPT2LMHeadModel)
    assert pkm.spec_of(model) == "hf:gpt2"
    model.config.save_pretrained(tmp_path)
    again = pkm.build_model(f"hf:{tmp_path}")
    assert isinstance(again, transformers.GPT2LMHeadModel)
    assert pkm.spec_of(again) == f"hf:{tmp_path.resolve()}"
    with pytest.raises(ValueError, match="neither a local directory"):
        pkm.build_model("hf:not-a-model-type-xyz")
