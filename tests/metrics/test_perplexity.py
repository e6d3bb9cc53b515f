"""perplexity: exp of the token-weighted mean next-token cross-entropy."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunekit.metrics import perplexity


class Uniform(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*ids.shape, self.vocab) * self.scale


class NextToken(nn.Module):
    """Knows the stream is ids 0, 1, 2, ... mod V: predicts id + 1 with a huge margin."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": 50.0 * nn.functional.one_hot((ids + 1) % self.vocab, self.vocab).float()}


def test_uniform_logits_give_the_vocab_size() -> None:
    g = torch.Generator().manual_seed(0)
    batches = [
        torch.randint(0, 37, (3, 11), generator=g),
        torch.randint(0, 37, (1, 5), generator=g),
    ]
    assert perplexity(Uniform(37), batches) == pytest.approx(37.0, rel=1e-6)


def test_perfect_prediction_gives_one_and_tuple_batches_work() -> None:
    ids = (torch.arange(40) % 13).view(4, 10)
    assert perplexity(NextToken(13), [(ids, None)]) == pytest.approx(1.0, abs=1e-6)
    # on the reversed stream every confident prediction is wrong: far above the uniform 13
    assert perplexity(NextToken(13), [ids.flip(1)]) > 1e6


def test_token_weighting_across_batch_shapes() -> None:
    # 2 predictions perfect (batch A), 8 uniform over 4 (batch B): exp((0 + 8 ln 4) / 10)
    class Mixed(nn.Module):
        def forward(self, ids):
            if ids.shape[1] == 3:
                return 100.0 * nn.functional.one_hot(ids.roll(-1, 1), 4).float()
            return torch.zeros(*ids.shape, 4)

    a = torch.tensor([[0, 1, 2]])
    b = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 0]])
    assert perplexity(Mixed(), [a, b]) == pytest.approx(math.exp(8 * math.log(4) / 10), rel=1e-5)


def test_eval_mode_no_grad_and_mode_restored() -> None:
    seen = {}

    class Probe(Uniform):
        def forward(self, ids):
            seen["training"], seen["grad"] = self.training, torch.is_grad_enabled()
            return super().forward(ids)

    model = Probe(5).train()
    perplexity(model, [torch.zeros(1, 4, dtype=torch.long)])
    assert seen == {"training": False, "grad": False} and model.training


def test_forward_fn_and_bad_inputs() -> None:
    model = nn.Embedding(7, 7)
    ids = torch.randint(0, 7, (2, 6), generator=torch.Generator().manual_seed(1))
    direct = perplexity(model, [ids])
    via = perplexity(model, [ids], forward_fn=lambda m, x: (m(x),))
    assert direct == pytest.approx(via)
    with pytest.raises(TypeError, match="token-id"):
        perplexity(model, [torch.randn(2, 6)])
    with pytest.raises(ValueError, match="no predictions"):
        perplexity(model, [])


def test_hf_tiny_llama() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=16,
    )
    model = transformers.LlamaForCausalLM(config)
    ids = torch.randint(0, 32, (2, 12), generator=torch.Generator().manual_seed(0))
    ppl = perplexity(model, [ids])
    with torch.no_grad():
        loss = model(ids, labels=ids, use_cache=False).loss  # HF's mean next-token loss
    assert ppl == pytest.approx(math.exp(loss.item()), rel=1e-5)
    assert 10 < ppl < 100  # random init: near the vocab size of 32
