"""Pruned Hugging Face models keep a config that describes them: save_pretrained output loads."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import prunekit as pk
from prunekit.structured.surgery import restore, snapshot

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
KWARGS = {"example_kwargs": {"use_cache": False}}


def _decoder(family: str) -> torch.nn.Module:
    """A tiny transformers `<family>ForCausalLM` (Llama, Qwen2) with 4 heads sharing 2 KV heads."""
    torch.manual_seed(0)
    config = getattr(transformers, f"{family}Config")(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=16,
    )  # fmt: skip
    return getattr(transformers, f"{family}ForCausalLM")(config).eval()


def _llama() -> torch.nn.Module:
    return _decoder("Llama")


def _qwen2() -> torch.nn.Module:
    return _decoder("Qwen2")


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
    model, ids = _qwen2(), torch.randint(0, 64, (1, 8))
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


def test_heads_and_hidden_size_pruned_together_reload_identically(tmp_path: Path) -> None:
    """Qwen2 infers heads (view(..., -1, head_dim)) and reads head_dim as hidden // heads: with
    the hidden size halved, 4 heads x 4 and 2 heads x 8 give the same shapes, so only comparing
    the rebuilt modules' attributes (head_dim) tells that the head counts changed."""
    model, ids = _qwen2(), torch.randint(0, 64, (1, 8))
    result = pk.prune(model, (ids,), ratio=0.5, **KWARGS)
    config = result.model.config
    assert result.verified and result.model is model
    assert (config.hidden_size, config.num_attention_heads, config.num_key_value_heads) == (
        16,
        2,
        1,
    )
    assert _reloads_identically(model, ids, tmp_path)


def test_a_scale_the_config_cannot_carry_is_reported() -> None:
    """Gemma multiplies embeddings by sqrt(hidden_size), fixed when built: the pruned model keeps
    the original scale, a reload would compute it from the new hidden size."""
    torch.manual_seed(0)
    config = transformers.GemmaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, intermediate_size=64, max_position_embeddings=16,
    )  # fmt: skip
    model, ids = transformers.GemmaForCausalLM(config).eval(), torch.randint(0, 64, (1, 8))
    with pytest.warns(UserWarning, match=r"scalar_embed_scale 5.65685 \(reloaded: 4\).*pk.save"):
        result = pk.prune(model, (ids,), ratio=0.5, **KWARGS)
    assert result.verified and model.config.hidden_size == 16


def test_t5_prunes_eagerly_with_its_bucket_count_kept() -> None:
    """T5's attention holds d_model, relative_attention_num_buckets and inner_dim, all 32: the
    inner size read back with reshape(*shape, -1) must not shrink the other two."""
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
        decoder_start_token_id=0,
    )  # fmt: skip
    model = transformers.T5ForConditionalGeneration(config).eval()
    ids = torch.randint(1, 64, (1, 8))
    kwargs = {"decoder_input_ids": torch.randint(1, 64, (1, 4)), "use_cache": False}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pk.prune(model, (ids,), ratio=0.5, example_kwargs=kwargs)
    assert not [w for w in caught if "config" in str(w.message)]
    assert model.config.d_ff == 32  # both stacks' feed-forward width, one config field
    attention = model.encoder.block[0].layer[0].SelfAttention
    assert result.verified and result.model is model  # not the exported-graph fallback
    assert attention.relative_attention_num_buckets == 32 and attention.d_model == 32
    assert attention.q.out_features == 16 and model(ids, **kwargs).logits.shape == (1, 4, 64)


TINY = {
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "max_position_embeddings": 16,
}


def _phi3():
    config = transformers.Phi3Config(
        **TINY, intermediate_size=64, num_key_value_heads=2, pad_token_id=0
    )
    return transformers.Phi3ForCausalLM(config)


def _opt():
    return transformers.OPTForCausalLM(
        transformers.OPTConfig(**TINY, ffn_dim=64, word_embed_proj_dim=32)
    )


@pytest.mark.parametrize("build", [_phi3, _opt], ids=["phi3", "opt"])
def test_more_families_prune_eagerly_and_reload_identically(build, tmp_path: Path) -> None:
    """Phi-3 (fused qkv and gate/up projections) and OPT (a `scaling` attribute that must follow
    the new head size, and no false alarm about it) beyond the coverage benchmark's families."""
    torch.manual_seed(0)
    model, ids = build().eval(), torch.randint(1, 64, (1, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        result = pk.prune(model, (ids,), ratio=0.5, **KWARGS)
    assert result.verified and result.model is model
    assert _reloads_identically(model, ids, tmp_path)
