"""Pruned Hugging Face models keep a config that describes them: save_pretrained output loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import prunekit as pk
from prunekit.structured.surgery import restore, snapshot

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
KWARGS = {"example_kwargs": {"use_cache": False}}


def _llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=16,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def _reloads_identically(model, ids, tmp_path: Path) -> bool:
    model.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        return torch.allclose(again(ids).logits, model(ids).logits, atol=1e-5)


def test_heads_pruned_with_the_hidden_size_kept(tmp_path: Path) -> None:
    """heads x head_dim equals hidden_size here: only the head counts may change in the config."""
    model, ids = _llama(), torch.randint(0, 64, (1, 8))
    keep_hidden = ["*.o_proj", "*.down_proj"]
    result = pk.prune(model, (ids,), ratio=0.5, attention="heads", ignore=keep_hidden, **KWARGS)
    config = result.model.config
    assert result.verified
    assert (config.hidden_size, config.num_attention_heads, config.num_key_value_heads) == (
        32,
        2,
        1,
    )
    assert config.intermediate_size == 32 and config.head_dim == 8
    assert _reloads_identically(result.model, ids, tmp_path)
    generated = result.model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 10)


def test_a_head_size_the_config_only_implied_is_written_out(tmp_path: Path) -> None:
    """Qwen2 reads head_dim with getattr(config, "head_dim", hidden // heads): with heads pruned
    and the hidden size kept, the config must say the head size."""
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=16,
    )  # fmt: skip
    model, ids = transformers.Qwen2ForCausalLM(config).eval(), torch.randint(0, 64, (1, 8))
    assert "head_dim" not in vars(model.config)
    keep_hidden = ["*.o_proj", "*.down_proj"]
    result = pk.prune(model, (ids,), ratio=0.5, attention="heads", ignore=keep_hidden, **KWARGS)
    config = result.model.config
    assert (config.hidden_size, config.num_attention_heads, config.head_dim) == (32, 2, 8)
    assert _reloads_identically(result.model, ids, tmp_path)


def test_hidden_size_pruned_too(tmp_path: Path) -> None:
    model, ids = _llama(), torch.randint(0, 64, (1, 8))
    result = pk.prune(model, (ids,), ratio=0.5, attention="heads", **KWARGS)
    assert result.verified and result.model.config.hidden_size == 16
    assert _reloads_identically(result.model, ids, tmp_path)


def test_restore_undoes_config_edits() -> None:
    model = _llama()
    state = snapshot(model)
    model.config.num_attention_heads = 1
    model.model.config.hidden_size = 8  # the same shared object
    restore(model, state)
    assert (model.config.num_attention_heads, model.config.hidden_size) == (4, 32)


def test_a_config_transformers_would_reject_warns() -> None:
    """Llama's config validator wants hidden_size % num_attention_heads == 0 (32 % 6 here)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=8,
        num_key_value_heads=4, intermediate_size=64, max_position_embeddings=16,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (1, 8))
    if not callable(getattr(model.config, "validate", None)):
        pytest.skip("this transformers does not validate configs")
    keep_hidden = ["*.o_proj", "*.down_proj"]
    with pytest.warns(UserWarning, match="rejects the pruned config.*pk.save"):
        pk.prune(model, (ids,), ratio=0.25, attention="heads", ignore=keep_hidden, **KWARGS)
    assert model.config.num_attention_heads == 6  # the sizes are still recorded
