"""After pruning, a Hugging Face model's config is checked by building the class from it: a
refused config or a tensor shape the config cannot reproduce is warned about; where no warning
is given, `save_pretrained` / `from_pretrained` round-trips."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit as pk

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
TEXT = {
    "vocab_size": 64,
    "hidden_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 32,
}


def _ids() -> torch.Tensor:
    return torch.randint(1, 64, (1, 8), generator=torch.Generator().manual_seed(0))


def _bert():
    return transformers.BertModel(transformers.BertConfig(**TEXT)), _ids(), {}


def _distilbert():
    config = transformers.DistilBertConfig(
        vocab_size=64, dim=64, n_layers=1, n_heads=4, hidden_dim=128, max_position_embeddings=32
    )
    return transformers.DistilBertModel(config), _ids(), {}


def _opt():
    config = transformers.OPTConfig(**TEXT, ffn_dim=128, word_embed_proj_dim=64)
    return transformers.OPTModel(config), _ids(), {"use_cache": False}


def _deberta():
    return transformers.DebertaModel(transformers.DebertaConfig(**TEXT)), _ids(), {}


def _llama():
    config = transformers.LlamaConfig(**TEXT, num_key_value_heads=2)
    return transformers.LlamaModel(config), _ids(), {"use_cache": False}


def _t5_encoder():
    config = transformers.T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4
    )
    return transformers.T5EncoderModel(config), _ids(), {}


def _mamba():
    config = transformers.MambaConfig(
        vocab_size=64, hidden_size=64, num_hidden_layers=1, state_size=8, expand=2
    )
    return transformers.MambaModel(config), _ids(), {"use_cache": False}


def _convnext():
    config = transformers.ConvNextConfig(hidden_sizes=[32, 64], depths=[1, 1], num_stages=2)
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return transformers.ConvNextModel(config), image, {}


class StagesConfig(transformers.PretrainedConfig):
    """A config whose only sizes are a list, one width per stage."""

    model_type = "prunekit_test_stages"

    def __init__(self, widths=(16, 24), **kwargs):
        self.widths = list(widths)
        super().__init__(**kwargs)


class StagesModel(transformers.PreTrainedModel):
    config_class = StagesConfig
    base_model_prefix = "stages"

    def __init__(self, config: StagesConfig):
        super().__init__(config)
        sizes = [8, *config.widths]
        self.stages = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.head = nn.Linear(sizes[-1], 4)
        self.post_init()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = torch.relu(stage(x))
        return self.head(x)


def _stages():
    return StagesModel(StagesConfig()), torch.randn(2, 8), {}


def _prune(build, **options) -> tuple[nn.Module, torch.Tensor, dict, list[str]]:
    """The model `build` makes, pruned eagerly; and prunekit's warnings about its config."""
    torch.manual_seed(0)
    model, inputs, kwargs = build()
    model.eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pk.prune(model, (inputs,), example_kwargs=kwargs or None, **options)
    assert result.model is model and result.verified  # pruned eagerly, not the exported graph
    told = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    return model, inputs, kwargs, [m for m in told if "save_pretrained" in m]


def _output(model: nn.Module, inputs: torch.Tensor, kwargs: dict) -> torch.Tensor:
    with torch.no_grad():
        out = model(inputs, **kwargs)
    return out if isinstance(out, torch.Tensor) else out[0]


def _round_trips(model: nn.Module, inputs, kwargs: dict, path: Path) -> bool:
    """Whether `from_pretrained` of `save_pretrained` output loads and computes the same."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save_pretrained(path)
            again = type(model).from_pretrained(path).eval()
    except Exception:  # noqa: BLE001 - refused on save or load: it does not round-trip
        return False
    return torch.allclose(_output(again, inputs, kwargs), _output(model, inputs, kwargs), atol=1e-5)


@pytest.mark.parametrize(
    ("build", "attention"),
    [(_bert, "heads"), (_distilbert, "heads"), (_opt, "heads"), (_deberta, "dims")],
    ids=["bert-heads", "distilbert-heads", "opt-heads", "deberta-default"],
)
def test_a_head_count_the_class_refuses_warns(build, attention: str, tmp_path: Path) -> None:
    """3 heads of 16 with the hidden size kept at 64: these classes refuse to build from a config
    whose head count does not divide the hidden size, so `from_pretrained` fails."""
    model, inputs, kwargs, told = _prune(build, ratio=0.3, attention=attention)
    assert len(told) == 1, told
    assert "rejects the pruned config" in told[0] and "pk.save" in told[0]
    assert "not a multiple" in told[0] or "divi" in told[0]  # the class's own reason
    heads = getattr(model.config, "num_attention_heads", None) or model.config.n_heads
    assert heads == 3  # the config still records the pruned head count
    assert not _round_trips(model, inputs, kwargs, tmp_path)


def test_a_size_outside_the_named_size_fields_is_updated(tmp_path: Path) -> None:
    """Mamba's x_proj rows are time_step_rank + 2 x state_size: pruning the rank (4 -> 3) must
    reach `time_step_rank`, which no size-like name gives away."""
    model, inputs, kwargs, told = _prune(_mamba, ratio=0.3)
    assert told == []
    assert model.layers[0].mixer.x_proj.out_features == 19
    assert model.config.time_step_rank == 3
    assert _round_trips(model, inputs, kwargs, tmp_path)


def test_per_stage_widths_in_a_list_field_are_updated(tmp_path: Path) -> None:
    model, inputs, kwargs, told = _prune(_stages, ratio=0.5)
    assert told == []
    assert model.config.widths == [m.out_features for m in model.stages] == [8, 12]
    assert _round_trips(model, inputs, kwargs, tmp_path)


def test_widths_a_list_field_cannot_hold_warn(tmp_path: Path) -> None:
    """ConvNeXt's MLP is 4 x the stage width: the stage width (32 -> 23) goes into
    `hidden_sizes`, the pruned MLP (128 -> 90, not 4 x 23) has no field, so it warns and names
    the tensors a reload would get wrong."""
    model, inputs, kwargs, told = _prune(_convnext, ratio=0.3)
    assert model.config.hidden_sizes[0] == model.embeddings.patch_embeddings.out_channels == 23
    assert len(told) == 1 and "config cannot describe the pruned sizes" in told[0]
    assert "pwconv1.weight 90x23 (reloaded: 92x23)" in told[0] and "pk.save" in told[0]
    assert not _round_trips(model, inputs, kwargs, tmp_path)


@pytest.mark.parametrize(
    ("build", "options"),
    [
        (_bert, {}),
        (_llama, {}),
        (_llama, {"attention": "heads"}),
        (_t5_encoder, {}),
        (_opt, {}),
        (_mamba, {"ratio": 0.5}),
    ],
    ids=["bert", "llama", "llama-heads", "t5-encoder", "opt", "mamba-0.5"],
)
def test_silence_means_save_pretrained_round_trips(build, options: dict, tmp_path: Path) -> None:
    """Both ways: no warning -> `from_pretrained` rebuilds the pruned model exactly; a warning ->
    it does not."""
    model, inputs, kwargs, told = _prune(build, **{"ratio": 0.3, **options})
    assert _round_trips(model, inputs, kwargs, tmp_path) == (told == [])
