"""prune_layerwise: block-by-block magnitude / Wanda / SparseGPT on tiny LMs and plain models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.unstructured import masks_of, prune_layerwise
from prunekit.unstructured._masks import MaskHook
from prunekit.unstructured._sparsegpt import HessianAccumulator, sparsegpt_prune
from prunekit.unstructured.layerwise import _capture, _record, default_forward, find_blocks

transformers = pytest.importorskip("transformers")

METHODS = ["magnitude", "wanda", "sparsegpt"]
VOCAB = 64


def llama(seed: int = 0, tie: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    return transformers.LlamaForCausalLM(config)


def gpt2(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config)


MODELS = {"llama": llama, "gpt2": gpt2}


def tokens(seed: int = 0, batches: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (2, 16), generator=g) for _ in range(batches)]


def matrix(model: nn.Module, name: str) -> torch.Tensor:
    """The ``[out, in]`` weight of a Linear or of GPT-2's transposed Conv1D."""
    module = model.get_submodule(name.removesuffix(".weight"))
    return module.weight.detach().T if type(module).__name__ == "Conv1D" else module.weight.detach()


def prune(model: nn.Module, **kwargs) -> pk.unstructured.SparsityReport:
    kwargs.setdefault("progress", False)
    return prune_layerwise(model, **kwargs)


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("method", METHODS)
def test_exact_sparsity_per_layer(kind, method):
    model = MODELS[kind]()
    original = copy.deepcopy(model)
    report = prune(model, data=tokens(), sparsity=0.5, method=method)
    assert len(report.layers) == (14 if kind == "llama" else 8)  # every linear of both blocks
    assert sorted(masks_of(model)) == sorted(layer.name for layer in report.layers)
    for layer in report.layers:
        assert layer.numel - layer.nonzeros == round(0.5 * layer.numel), layer.name
        if method == "wanda":  # compared within each output row
            rows = matrix(model, layer.name)
            assert ((rows == 0).sum(1) == rows.shape[1] // 2).all()
    before, after = original.state_dict(), model.state_dict()
    for name in before:  # embeddings, norms, lm_head and biases untouched
        if not any(name == layer.name for layer in report.layers):
            assert torch.equal(before[name], after[name]), name
    changed = []
    for layer in report.layers:
        kept = after[layer.name] != 0
        if not torch.equal(after[layer.name][kept], before[layer.name][kept]):
            changed.append(layer.name)
    assert bool(changed) == (method == "sparsegpt")  # only sparsegpt updates the kept weights


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("method", METHODS)
def test_two_four(kind, method):
    model = MODELS[kind]()
    report = prune(model, data=tokens(), method=method, pattern="2:4")
    assert report.sparsity == 0.5
    for layer in report.layers:
        w = matrix(model, layer.name)
        groups = (w != 0).reshape(w.shape[0], -1, 4).sum(-1)
        assert (groups <= 2).all(), layer.name


def test_wanda_scores_by_hand():
    torch.manual_seed(0)
    layer = nn.Linear(8, 6)
    model = nn.Sequential(layer)
    original = layer.weight.detach().clone()
    scale = torch.logspace(-1, 1, 8)[torch.randperm(8)]
    data = [torch.randn(5, 8) * scale, torch.randn(7, 8) * scale]
    prune(model, data=data, sparsity=0.5, method="wanda")
    norms = torch.cat(data).pow(2).sum(0).sqrt()  # ||X_j|| over all 12 samples
    scores = original.abs() * norms
    expected = torch.zeros(6, 8, dtype=torch.bool)
    for row in range(6):
        expected[row, scores[row].argsort(descending=True)[:4]] = True
    assert torch.equal(layer.weight_mask, expected)
    magnitude = torch.zeros_like(expected)
    for row in range(6):
        magnitude[row, original[row].abs().argsort(descending=True)[:4]] = True
    assert not torch.equal(expected, magnitude)  # the inputs matter here


def two_blocks(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Sequential(nn.Linear(8, 16), nn.ReLU()), nn.Sequential(nn.Linear(16, 8), nn.Tanh())
    )


def hessian(x: torch.Tensor) -> torch.Tensor:
    acc = HessianAccumulator(x.shape[-1])
    acc.add(x)
    return acc.hessian()


def test_block_statistics_come_from_the_pruned_blocks_before():
    model = two_blocks()
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(32, 8, generator=g) for _ in range(2)]
    x = torch.cat(data)
    prune(model, data=data, sparsity=0.5, method="sparsegpt")

    w0, b0 = ref[0][0].weight.detach(), ref[0][0].bias.detach()
    new0, _ = sparsegpt_prune(w0, hessian(x), sparsity=0.5)
    torch.testing.assert_close(model[0][0].weight, new0.float())
    w1 = ref[1][0].weight.detach()
    pruned_inputs = torch.relu(x @ new0.float().T + b0)
    dense_inputs = torch.relu(x @ w0.T + b0)
    expected, _ = sparsegpt_prune(w1, hessian(pruned_inputs), sparsity=0.5)
    from_dense, _ = sparsegpt_prune(w1, hessian(dense_inputs), sparsity=0.5)
    torch.testing.assert_close(model[1][0].weight, expected.float())
    assert not torch.allclose(expected, from_dense, atol=1e-4)  # the two variants differ here


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_captured_inputs_replay_the_model(kind):
    # The first block's captured inputs (hidden states, masks, rotary cos/sin...) run through
    # the blocks one by one must give the model's own hidden states.
    model = MODELS[kind]().eval()
    ids = tokens(2, batches=1)[0]
    _, blocks = find_blocks(model)
    with torch.no_grad():
        states = model(ids, output_hidden_states=True, use_cache=False).hidden_states
        (call,) = _record(model, blocks[:1], ids, default_forward)
        for index, block in enumerate(blocks[:-1]):
            call = call.with_hidden(call.run(block))
            torch.testing.assert_close(call.args[0], states[index + 1])


def test_blocks_found_or_given():
    model = llama()
    assert find_blocks(model)[0] == "model.layers"
    assert find_blocks(gpt2())[0] == "transformer.h"
    default = prune(model, data=tokens(), method="wanda")
    by_name = prune(llama(), data=tokens(), method="wanda", blocks="model.layers")
    other = llama()
    by_module = prune(other, data=tokens(), method="wanda", blocks=other.model.layers)
    assert by_name.to_dict() == default.to_dict() == by_module.to_dict()
    with pytest.raises(ValueError, match="submodules of the model"):
        prune(llama(), data=tokens(), blocks=other.model.layers)


def test_ignore_leaves_layers_dense():
    model = llama()
    original = copy.deepcopy(model)
    report = prune(model, data=tokens(), method="sparsegpt", ignore=["*.mlp.*"])
    assert len(report.layers) == 8  # q, k, v, o of two blocks
    for name, module in model.named_modules():
        if ".mlp." in name and isinstance(module, nn.Linear):
            assert torch.equal(module.weight, original.get_submodule(name).weight)
            assert not hasattr(module, "weight_mask")
    report = prune(llama(), data=tokens(), method="wanda", ignore=["model.layers.0"])  # a block
    assert {layer.name.split(".")[2] for layer in report.layers} == {"1"}


def test_magnitude_is_per_layer_and_needs_no_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
    with torch.no_grad():
        model[2].weight.mul_(100)  # a global threshold would prune only the first layer
    report = prune(model, sparsity=0.25, method="magnitude")
    assert [layer.nonzeros for layer in report.layers] == [192, 192]


def test_repeated_calls_keep_existing_zeros():
    model = llama()
    prune(model, data=tokens(), sparsity=0.3, method="wanda")
    first = {name: ~mask.clone() for name, mask in masks_of(model).items()}
    report = prune(model, data=tokens(), sparsity=0.6, method="sparsegpt")
    for layer in report.layers:
        assert layer.numel - layer.nonzeros == round(0.6 * layer.numel)
        pruned = ~masks_of(model)[layer.name]
        assert pruned[first[layer.name]].all(), layer.name


def test_batch_forms():
    ids = tokens()
    pairs = [(x, x) for x in ids]
    dicts = [{"input_ids": x, "attention_mask": torch.ones_like(x)} for x in ids]
    for data in (pairs, dicts):
        report = prune(llama(), data=data, method="sparsegpt", max_batches=2)
        assert report.sparsity == 0.5


def test_masks_survive_fine_tuning():
    model = llama()
    prune(model, data=tokens(), method="sparsegpt")
    pruned = {name: ~mask.clone() for name, mask in masks_of(model).items()}
    params = dict(model.named_parameters())
    before = {name: params[name].detach().clone() for name in pruned}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    for ids in tokens(5):
        optimizer.zero_grad()
        model(ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()
    for name, where in pruned.items():
        assert (params[name][where] == 0).all(), name
        assert not torch.equal(params[name], before[name])  # the kept weights did train


def test_train_mode_is_restored():
    model = llama().train()
    model.model.layers[0].eval()
    modes = {name: m.training for name, m in model.named_modules()}
    prune(model, data=tokens(), method="wanda")
    assert {name: m.training for name, m in model.named_modules()} == modes


class Failing(nn.Module):
    """A block that fails when run: the error comes after the first block was pruned."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        raise RuntimeError("boom")


def test_model_untouched_on_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Linear(8, 16), nn.ReLU()), Failing())
    pk.sparsify(model[0], sparsity=0.25, scope="local")  # an existing mask must come back
    state = copy.deepcopy(model.state_dict())
    hooks = {name: dict(m._forward_pre_hooks) for name, m in model.named_modules()}
    data = [torch.randn(4, 8)]
    for method in ("wanda", "sparsegpt"):
        with pytest.raises(RuntimeError, match="boom"):
            prune(model, data=data, sparsity=0.5, method=method)
        after = model.state_dict()
        assert sorted(after) == sorted(state)
        assert all(torch.equal(after[k], state[k]) for k in state)
        assert {name: dict(m._forward_pre_hooks) for name, m in model.named_modules()} == hooks
    assert not any(isinstance(h, MaskHook) for h in model[1].fc._forward_pre_hooks.values())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "obs"}, ValueError, "unknown method 'obs'; use one of magnitude"),
        ({"sparsity": 0.0}, ValueError, r"in \(0, 1\)"),
        ({"sparsity": 1.0}, ValueError, r"in \(0, 1\)"),
        ({"sparsity": "half"}, TypeError, "must be a number"),
        ({"pattern": "2:4", "sparsity": 0.6}, ValueError, "Omit sparsity="),
        ({"pattern": "block4x4"}, ValueError, "N:M"),
        ({"pattern": "2:4", "block_size": 6}, ValueError, "multiple of M=4"),
        ({"damping": -1.0}, ValueError, "damping"),
        ({"ignore": ["nope.*"]}, ValueError, "match no module"),
        ({"data": None, "method": "wanda"}, ValueError, "needs calibration data: pass data="),
        ({"data": None}, ValueError, "needs calibration data"),
        ({"data": []}, ValueError, "no batches"),
        ({"data": torch.zeros(2, 4, dtype=torch.long)}, TypeError, r"wrap a single batch"),
        ({"data": ["text"]}, TypeError, "token ids"),
        ({"blocks": "model.nothing"}, ValueError, "not a submodule"),
        ({"blocks": [nn.Linear(2, 2)]}, ValueError, "submodules of the model"),
    ],
)
def test_errors_say_how_to_fix(kwargs, error, match):
    model = llama()
    state = copy.deepcopy(model.state_dict())
    kwargs = {"data": tokens(), **kwargs}
    with pytest.raises(error, match=match):
        prune(model, **kwargs)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not masks_of(model)


def test_no_blocks_found():
    with pytest.raises(ValueError, match="pass blocks="):
        prune(nn.Sequential(nn.Conv2d(1, 1, 1)), method="magnitude")


def test_bfloat16_model():
    model = llama().to(torch.bfloat16)
    report = prune(model, data=tokens(), method="sparsegpt", pattern="2:4")
    assert report.sparsity == 0.5
    assert model.model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x, scale=1.0):
        return torch.tanh(self.fc(x) * scale)


class PerBlockInputs(nn.Module):
    """Each block gets its own keyword input (as sliding-window layers get their own masks);
    `between` transforms the hidden states between blocks (which breaks the chain)."""

    def __init__(self, between: float = 1.0, repeat: int = 1) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Scaled() for _ in range(3))
        self.between, self.repeat = between, repeat

    def forward(self, x):
        for index, block in enumerate(self.blocks):
            for _ in range(self.repeat):
                x = block(x, scale=torch.tensor(float(index + 1))) * self.between
        return x


def test_blocks_with_their_own_keyword_inputs():
    torch.manual_seed(0)
    model = PerBlockInputs()
    ref = copy.deepcopy(model)
    data = [torch.randn(6, 8), torch.randn(4, 8)]
    prune(model, data=data, sparsity=0.5, method="sparsegpt")
    x = torch.cat(data)
    for index, block in enumerate(ref.blocks):  # block after pruned block, by hand
        new, _ = sparsegpt_prune(block.fc.weight.detach(), hessian(x), sparsity=0.5)
        torch.testing.assert_close(model.blocks[index].fc.weight, new.float())
        with torch.no_grad():
            block.fc.weight.copy_(new)
            x = block(x, scale=float(index + 1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"between": 2.0}, "does not take block 0's output"), ({"repeat": 2}, "ran 2 times")],
)
def test_blocks_that_do_not_chain_are_refused(kwargs, match):
    model = PerBlockInputs(**kwargs)
    with pytest.raises(ValueError, match=match):
        prune(model, data=[torch.randn(4, 8)], method="sparsegpt")
    assert not masks_of(model)


def test_save_and_load_keep_masks_and_zeros(tmp_path):
    model = gpt2()
    prune(model, data=tokens(), method="sparsegpt", pattern="2:4")
    path = pk.save(model, tmp_path / "gpt2")
    loaded = pk.load(path, build=gpt2)
    assert sorted(masks_of(loaded)) == sorted(masks_of(model))
    ids = tokens(3, batches=1)[0]
    model.eval(), loaded.eval()  # no dropout
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_progress_prints_nothing_off_a_terminal(capsys):
    prune(two_blocks(), data=[torch.randn(4, 8)], method="wanda", progress=True)
    assert capsys.readouterr() == ("", "")


class TwoOut(nn.Module):
    def __init__(self, residual: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.residual = residual

    def forward(self, x, extra=None):
        if self.residual:  # a residual stream: extra accumulates the hidden states
            extra = (torch.zeros_like(x) if extra is None else extra) + x
            return torch.tanh(self.fc(extra)), extra
        if extra is None:  # a position bias, computed by the first block only
            extra = torch.linspace(-1, 1, 8)
        return torch.tanh(self.fc(x) + extra), extra


class Handing(nn.Module):
    def __init__(self, residual: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TwoOut(residual) for _ in range(3))

    def forward(self, x):
        extra = None
        for block in self.blocks:
            x, extra = block(x, extra=extra)
        return x


def test_a_fixed_tensor_handed_between_blocks_is_fine():
    torch.manual_seed(0)
    model = Handing(residual=False)
    report = prune(model, data=[torch.randn(6, 8)], method="sparsegpt")
    assert report.sparsity == 0.5


def test_a_residual_stream_between_blocks_is_refused():
    torch.manual_seed(0)
    model = Handing(residual=True)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="changes with pruning"):
        prune(model, data=[torch.randn(6, 8)], method="sparsegpt")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not masks_of(model)


def test_a_key_value_cache_is_left_out():
    # With use_cache=True each block re-run would append to the cache and attend to it.
    default, cached = llama(), llama()
    prune(default, data=tokens(), method="sparsegpt")
    prune(cached, data=tokens(), method="sparsegpt", forward_fn=lambda m, x: m(x, use_cache=True))
    for name, weight in default.state_dict().items():
        torch.testing.assert_close(cached.state_dict()[name], weight)


def test_compare_row_or_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8))
    with torch.no_grad():
        model[0].weight[:4].mul_(10)  # rows of very different scales
    data = [torch.randn(32, 16)]
    by_row = copy.deepcopy(model)
    prune(by_row, data=data, method="magnitude", compare="row")
    assert ((by_row[0].weight == 0).sum(1) == 8).all()
    prune(model, data=data, method="wanda", compare="layer")
    per_row = (model[0].weight == 0).sum(1)
    assert int(per_row.sum()) == 64 and (per_row[:4] < 8).all()  # big rows keep more
    with pytest.raises(ValueError, match="compare="):
        prune(two_blocks(), data=data, method="sparsegpt", compare="row")
    with pytest.raises(ValueError, match="'row' or 'layer'"):
        prune(two_blocks(), data=data, method="wanda", compare="column")


def test_sliding_window_layers_get_their_own_masks():
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        use_sliding_window=True,
        sliding_window=4,
        layer_types=["full_attention", "sliding_attention", "full_attention"],
    )
    model = transformers.Qwen2ForCausalLM(config).eval()
    ids = tokens(4, batches=2)
    _, blocks = find_blocks(model)
    with torch.no_grad():
        inputs = _capture(model, blocks, ids, default_forward)
        assert inputs.templates[0] is not inputs.templates[1]  # recorded per block
        for index, block in enumerate(blocks[:-1]):  # the dense blocks replay the model
            calls = inputs.calls(index)
            inputs.advance(index, block, calls)
        for batch, x in enumerate(ids):
            states = model(x, output_hidden_states=True, use_cache=False).hidden_states
            torch.testing.assert_close(inputs.hidden[batch], states[len(blocks) - 1])


def test_top_level_name():
    import prunekit as pk
    from prunekit.unstructured import prune_layerwise

    assert pk.prune_layerwise is prune_layerwise and "prune_layerwise" in dir(pk)


def test_each_batch_replays_the_masks_the_model_gives_each_block():
    """A full-attention and a sliding-window layer: a first batch shorter than the window gives
    both layers the same (no) mask, longer batches do not; every block must replay the mask the
    model passes it for that batch, not the first batch's pattern."""
    from prunekit.train._eval import default_forward
    from prunekit.unstructured.layerwise import _capture, _record

    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64,
        use_sliding_window=True, sliding_window=4, max_window_layers=1,
    )  # fmt: skip
    model = transformers.Qwen2ForCausalLM(config).eval()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, VOCAB, (2, n), generator=g) for n in (3, 16)]
    _, blocks = find_blocks(model)
    with torch.no_grad():
        captured = _capture(model, blocks, batches, default_forward)
        truth = _record(model, blocks, batches[1], default_forward)
    for block in range(len(blocks)):
        want = truth[block].kwargs.get("attention_mask")
        got = captured.templates[block][1].kwargs.get("attention_mask")
        assert (want is None) == (got is None)
        if want is not None:
            assert torch.equal(want, got)


def t5(seed: int = 0, tie: bool = True) -> nn.Module:
    """An encoder of 2 blocks and a decoder of 3 (so the stack with the most blocks is not the
    first one the model runs)."""
    torch.manual_seed(seed)
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3,
        num_heads=4, decoder_start_token_id=0, pad_token_id=0, tie_word_embeddings=tie,
    )  # fmt: skip
    return transformers.T5ForConditionalGeneration(config)


def seq2seq(seed: int = 0) -> list[dict[str, torch.Tensor]]:
    return [{"input_ids": x, "labels": y} for x, y in zip(tokens(seed), tokens(seed + 1))]


@pytest.mark.parametrize("method", METHODS)
def test_encoder_decoder_prunes_every_stack(method):
    from prunekit.unstructured.layerwise import find_stacks

    model = t5()
    assert [name for name, _ in find_stacks(model)] == ["encoder.block", "decoder.block"]
    assert [name for name, _ in find_stacks(llama())] == ["model.layers"]
    original = copy.deepcopy(model)
    report = prune(model, data=seq2seq(), method=method)
    names = [layer.name for layer in report.layers]
    linears = [n for n, m in model.named_modules() if ".block." in n and isinstance(m, nn.Linear)]
    assert names == [f"{n}.weight" for n in linears]  # encoder first, then decoder
    assert len(names) == 2 * 6 + 3 * 10  # q, k, v, o (+ cross-attention's), wi, wo per block
    assert all(layer.sparsity == 0.5 for layer in report.layers)
    assert torch.equal(model.shared.weight, original.shared.weight)  # tied to lm_head: dense
    if method != "magnitude":  # the decoder is calibrated on the pruned encoder's outputs
        by_stack = t5()
        prune(by_stack, data=seq2seq(), method=method, blocks="encoder.block")
        prune(by_stack, data=seq2seq(), method=method, blocks="decoder.block")
        for name, weight in by_stack.state_dict().items():
            torch.testing.assert_close(model.state_dict()[name], weight)


def test_encoder_decoder_without_decoder_inputs_says_what_to_pass():
    model = t5()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"decoder\.block.*decoder inputs"):
        prune(model, data=tokens(), method="wanda")  # token ids only: the decoder cannot run
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not masks_of(model)


def shared_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "shared with" in str(w.message)]


def test_lm_head_tied_to_the_embedding():
    import warnings

    model = llama(tie=True)
    embedding = model.model.embed_tokens.weight
    assert model.lm_head.weight is embedding
    original = embedding.detach().clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = prune(model, data=tokens(), method="sparsegpt")
    assert "lm_head.weight" not in [layer.name for layer in report.layers]  # dense by default
    assert torch.equal(embedding, original) and not shared_warnings(caught)

    model = llama(tie=True)  # the head pruned on request: the embedding loses the same entries
    with pytest.warns(UserWarning) as caught:
        report = prune(model, method="magnitude", blocks=[*model.model.layers, model.lm_head])
    (message,) = shared_warnings(caught)
    assert "lm_head.weight is shared with model.embed_tokens.weight" in message
    assert "ignore=['lm_head']" in message
    assert report.layers[-1].name == "lm_head.weight" and report.layers[-1].sparsity == 0.5
    assert int((model.model.embed_tokens.weight == 0).sum()) == original.numel() // 2


class TiedLM(nn.Module):
    """A stack whose last block is the output layer, tied to the input embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.stack = nn.Sequential(
            nn.Sequential(nn.Linear(16, 16), nn.Tanh()), nn.Linear(16, VOCAB, bias=False)
        )
        self.stack[1].weight = self.embed.weight

    def forward(self, ids):
        return self.stack(self.embed(ids))


def test_a_tied_weight_found_in_the_blocks_is_flagged():
    torch.manual_seed(0)
    model = TiedLM()
    with pytest.warns(UserWarning) as caught:
        prune(model, data=tokens(), method="sparsegpt")
    (message,) = shared_warnings(caught)
    assert "stack.1.weight is shared with embed.weight" in message
    assert "SparseGPT also changed the entries it kept" in message


def test_movement_is_not_one_shot(capsys):
    from prunekit.cli.main import main

    with pytest.raises(ValueError, match="movement scores come from training"):
        prune(llama(), data=tokens(), method="movement")
    assert main(["prune", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "any criterion with --data text" not in text  # movement cannot run layer by layer
    assert "magnitude or wanda with --data text, prune layer by layer" in text
    assert "movement estimates its scores from one gradient step on a labelled --data" in text


def test_fused_expert_weights_left_dense_are_named():
    """Mixtral's experts are [experts, out, in] parameters, not linear layers: they stay dense,
    and with 89% of the blocks' weights there the warning says so (the report alone read 50%)."""
    torch.manual_seed(0)
    config = transformers.MixtralConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, num_local_experts=4,
    )  # fmt: skip
    model = transformers.MixtralForCausalLM(config).eval()
    with pytest.warns(UserWarning, match=r"6 other weight tensor\(s\) holding 89%.*experts"):
        report = prune_layerwise(model, tokens(), sparsity=0.5, method="wanda")
    assert report.sparsity == pytest.approx(0.5)
    assert not (model.model.layers[0].mlp.experts.gate_up_proj == 0).any()
