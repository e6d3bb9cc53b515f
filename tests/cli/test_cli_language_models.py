"""`prunekit prune hf:DIR` on a tiny saved Llama: its weights are loaded, token ids are its example
input, structured pruning needs no cache flags, and SparseGPT / Wanda prune it layer by layer from
a text corpus."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from prunekit.cli.main import main

transformers = pytest.importorskip("transformers")


@pytest.fixture
def llama_dir(tmp_path):
    """A tiny trained-looking Llama saved with save_pretrained (byte vocabulary: 257 ids)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    path = tmp_path / "llama"
    model.save_pretrained(path)
    return path


@pytest.fixture
def corpus(tmp_path):
    """A directory of .txt files whose records are separated by lines holding only %."""
    root = tmp_path / "corpus"
    root.mkdir()
    lines = [
        f"Record {i}: the quick brown fox jumps over the lazy dog {i % 7} times." for i in range(60)
    ]
    (root / "a.txt").write_text("\n%\n".join(lines) + "\n")
    return root


def _logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def test_hf_directory_is_built_with_its_saved_weights(llama_dir):
    from prunekit.models import build_model

    saved = transformers.LlamaForCausalLM.from_pretrained(llama_dir).eval()
    built = build_model(f"hf:{llama_dir}").eval()
    ids = torch.randint(0, 257, (1, 8))
    torch.testing.assert_close(_logits(built, ids), _logits(saved, ids))


def test_structured_pruning_of_a_language_model(llama_dir, capsys):
    import prunekit

    argv = ["prune", f"hf:{llama_dir}", "--ratio", "0.5", "--out", "r50", "-q", "--json"]
    assert main(argv) == 0  # token ids as example input, no use_cache flag needed
    summary = json.loads(capsys.readouterr().out)
    assert summary["input_shape"] == [1, 32] and summary["verified"]
    assert summary["after"]["params"] < summary["before"]["params"]
    model = prunekit.load("r50")
    assert model.config.intermediate_size == 32


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_layer_by_layer_pruning_from_a_text_corpus(llama_dir, corpus, method, capsys):
    import prunekit
    from prunekit.unstructured import sparsity_report

    argv = ["prune", f"hf:{llama_dir}", "--sparsity", "0.5", "--importance", method,
            "--data", "text", "--data-root", str(corpus), "--out", "s50", "-q", "--json"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scope"] == "layer by layer"
    model = prunekit.load("s50")
    layers = sparsity_report(model.model.layers).layers  # the decoder's linear layers
    assert len(layers) == 14 and all(layer.remaining == pytest.approx(0.5) for layer in layers)
    assert (
        model.model.embed_tokens.weight.count_nonzero() == model.model.embed_tokens.weight.numel()
    )


def test_layer_by_layer_errors_exit_2(llama_dir, corpus, tmp_path, capsys):
    base = ["prune", f"hf:{llama_dir}", "--sparsity", "0.5", "--importance", "sparsegpt"]
    assert main([*base, "--out", "a"]) == 2
    assert "--data text" in capsys.readouterr().err
    assert (
        main([*base, "--data", "text", "--data-root", str(corpus), "--scope", "lamp", "--out", "b"])
        == 2
    )
    assert "drop --scope" in capsys.readouterr().err
    assert main(["prune", "lenet300", "--sparsity", "0.5", "--data", "text", "--out", "c"]) == 2
    assert "not read token ids" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abc")


def test_byte_ids_for_a_model_without_its_tokenizer_are_flagged(tmp_path, corpus):
    from prunekit.recipes._resolve import resolve_model
    from prunekit.recipes.tasks import _text_batches

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=300, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    resolved = resolve_model(f"hf:{tmp_path / 'gpt2'}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = _text_batches(resolved, str(corpus), count=2, seed=0)
    assert any("byte ids" in str(w.message) for w in caught)
    assert [tuple(b.shape) for b in batches] == [(8, 32), (8, 32)]  # windows fit n_positions


def test_an_encoder_decoder_says_it_needs_decoder_inputs(tmp_path, capsys):
    """A T5 cannot run on token ids alone: the error says why and what to do, not the
    embedding's complaint about the float tensor tried after the ids."""
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=100, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=8
    )
    transformers.T5ForConditionalGeneration(config).save_pretrained(tmp_path / "t5")
    assert main(["prune", f"hf:{tmp_path / 't5'}", "--ratio", "0.3", "--out", "pruned"]) == 2
    err = capsys.readouterr().err
    assert "encoder-decoder" in err and "decoder_input_ids" in err and "FloatTensor" not in err
    assert not (tmp_path / "pruned").exists()
