"""pk.profile: MACs, sparse MACs, params, energy, memory and size checked against hand counts."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.metrics.energy import DRAM_READ_PJ, MAC_PJ, SRAM_ACCESS_PJ


def conv_linear() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 0
        nn.BatchNorm2d(8),  # 1
        nn.ReLU(),  # 2
        nn.Flatten(),  # 3
        nn.Linear(8 * 4 * 4, 5),  # 4
    )


X = torch.randn(2, 3, 4, 4)
# conv: batch 2 x out 8 x 4x4 positions x (3 in x 3x3 taps); linear: batch 2 x 5 out x 128 in
CONV_MACS = 2 * 8 * 16 * 3 * 9
LINEAR_MACS = 2 * 5 * 128


def test_macs_of_conv_and_linear_match_hand_count():
    prof = pk.profile(conv_linear(), X, latency=False, memory=False, size=False)
    assert prof.macs == CONV_MACS + LINEAR_MACS == 8192
    assert prof.nonzero_macs == prof.macs
    assert prof.layers["0"]["macs"] == CONV_MACS
    assert prof.layers["4"]["macs"] == LINEAR_MACS
    assert prof.layers["1"]["macs"] == 0  # norms cost no MACs
    assert prof.batch_size == 2
    assert (prof.device, prof.dtype) == ("cpu", "float32")


def test_grouped_conv_macs():
    conv = nn.Conv2d(4, 8, 3, groups=2)  # each output channel sees 4 / 2 input channels
    prof = pk.profile(conv, torch.randn(1, 4, 5, 5), latency=False, memory=False, size=False)
    assert prof.macs == 8 * 3 * 3 * (4 // 2) * 9


@pytest.mark.parametrize(
    ("layer", "gates"),
    [
        (nn.LSTM(6, 5, batch_first=True), 4),
        (nn.GRU(6, 5, batch_first=True), 3),
        (nn.RNN(6, 5, batch_first=True), 1),
        (nn.LSTM(6, 5, num_layers=2, bidirectional=True, batch_first=True), 4),
    ],
    ids=["lstm", "gru", "rnn", "lstm-2-layers-bidirectional"],
)
def test_recurrent_macs_count_every_weight_matrix_at_every_step(layer, gates):
    batch, steps = 3, 7
    prof = pk.profile(layer, torch.randn(batch, steps, 6), latency=False, memory=False, size=False)
    directions = 2 if layer.bidirectional else 1
    per_step = gates * 5 * (6 + 5) * directions  # layer 0: input 6, hidden 5
    if layer.num_layers == 2:
        per_step += gates * 5 * (5 * directions + 5) * directions  # layer 1 reads both directions
    assert prof.macs == batch * steps * per_step


def test_attention_macs_count_projections_and_scores():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    q = torch.randn(2, 5, 8)
    prof = pk.profile(mha, (q, q, q), latency=False, memory=False, size=False)
    b, s, e = 2, 5, 8
    in_proj = b * s * e * 3 * e
    scores_and_values = 2 * b * s * s * e  # q @ k^T and attn @ v over all heads
    out_proj = b * s * e * e
    assert prof.macs == in_proj + scores_and_values + out_proj
    assert torch.backends.mha.get_fastpath_enabled()  # switched back on


def test_nonzero_macs_scale_with_planted_weight_zeros():
    model = conv_linear()
    with torch.no_grad():
        model[0].weight[:2] = 0  # 2 of 8 filters: density 3/4
        model[4].weight[:, :96] = 0  # 96 of 128 inputs: density 1/4
    prof = pk.profile(model, X, latency=False, memory=False, size=False)
    assert prof.macs == CONV_MACS + LINEAR_MACS
    assert prof.nonzero_macs == CONV_MACS * 3 // 4 + LINEAR_MACS // 4
    assert prof.layers["0"]["nonzero_macs"] == CONV_MACS * 3 // 4
    assert prof.layers["4"]["nonzero_macs"] == LINEAR_MACS // 4


def test_params_and_nonzeros_count_tied_weights_once():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, x):
            return self.head(self.emb(x))

    model = Tied()
    with torch.no_grad():
        model.emb.weight[:3] = 0
    prof = pk.profile(model, torch.tensor([[1, 2, 3]]), latency=False, memory=False, size=False)
    assert prof.params == 40
    assert prof.nonzero_params == 28
    assert prof.layers["emb"]["params"] == 40  # the shared weight, under its first owner
    assert prof.layers["head"]["params"] == 0
    assert prof.macs == 3 * 4 * 10
    assert prof.nonzero_macs == 3 * 4 * 10 * 28 // 40


def test_conv_linear_params_by_hand():
    prof = pk.profile(conv_linear(), X, latency=False, memory=False, size=False)
    conv, bn, fc = 8 * 3 * 9 + 8, 2 * 8, 5 * 128 + 5
    assert prof.params == conv + bn + fc
    assert prof.layers["0"]["params"] == conv
    assert prof.nonzero_params == prof.params - 8  # BatchNorm's bias starts at zero


def test_energy_estimate_of_tiny_linear_by_hand():
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]]))  # 3 of 6 nonzero
        lin.bias.copy_(torch.tensor([0.5, 0.0]))  # 1 of 2 nonzero
    prof = pk.profile(lin, torch.ones(1, 3), latency=False, memory=False, size=False)
    assert (prof.macs, prof.nonzero_macs, prof.nonzero_params) == (6, 3, 4)
    assert prof.activation_elements == 3 + 2  # read the input row, write the output row
    expected_pj = 3 * 4.6 + 4 * 640 + 5 * 5
    assert MAC_PJ == pytest.approx(4.6) and (DRAM_READ_PJ, SRAM_ACCESS_PJ) == (640, 5)
    assert prof.energy_mj == pytest.approx(expected_pj * 1e-9)
    assert sum(prof.energy_breakdown_mj.values()) == pytest.approx(prof.energy_mj)
    assert prof.energy_is_estimate is True


def test_activation_elements_skip_views_and_count_in_place_ops():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(6, 2))
    prof = pk.profile(model, torch.randn(3, 4), latency=False, memory=False, size=False)
    # linear 12 read + 18 written; relu_ 18 + 18; flatten is a view; linear 18 + 6
    assert prof.activation_elements == 30 + 36 + 24


def test_peak_memory_counts_weights_inputs_and_live_intermediates():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(2, 8)
    prof = pk.profile(model, x, latency=False, size=False)
    weights = (8 * 16 + 16 + 16 * 4 + 4) * 4
    # while ReLU runs, the first linear's output (2x16 floats) and ReLU's output are both alive
    assert prof.peak_activation_bytes == 2 * (2 * 16 * 4)
    assert prof.peak_memory_bytes == weights + x.numel() * 4 + prof.peak_activation_bytes


def test_size_is_the_saved_safetensors_file(tmp_path):
    model = conv_linear()
    prof = pk.profile(model, X, latency=False, memory=False)
    saved = pk.save(model, tmp_path / "m")
    assert prof.size_bytes == (saved / "model.safetensors").stat().st_size
    assert 0 < prof.size_compressed_bytes <= prof.size_bytes + 64
    assert prof.compression == "zlib-9"

    sparse = nn.Linear(256, 256)
    with torch.no_grad():
        sparse.weight[:, 16:] = 0
    sparse_prof = pk.profile(sparse, torch.randn(1, 256), latency=False, memory=False)
    assert sparse_prof.size_compressed_bytes < sparse_prof.size_bytes // 4


def test_size_of_a_masked_model_counts_the_masks_it_saves(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    pk.sparsify(model, 0.75)  # adds a bool weight_mask buffer per Linear, saved with the model
    prof = pk.profile(model, torch.randn(2, 64), latency=False, memory=False)
    saved = pk.save(model, tmp_path / "masked")
    assert prof.size_bytes == (saved / "model.safetensors").stat().st_size


def test_switches_leave_fields_none_and_to_dict_is_json():
    prof = pk.profile(conv_linear(), X, latency=False, memory=False, size=False)
    for name in ("latency_ms", "latency_p10_ms", "latency_p90_ms", "latency_runs"):
        assert getattr(prof, name) is None
    assert prof.peak_memory_bytes is None and prof.size_bytes is None
    data = json.loads(json.dumps(prof.to_dict()))
    assert data["energy_is_estimate"] is True
    assert data["machine"]["torch"] == torch.__version__
    assert data["threads"] == torch.get_num_threads()


def test_latency_fields_are_positive_and_threads_restored():
    before = torch.get_num_threads()
    prof = pk.profile(conv_linear(), X, runs=3, warmup=1, threads=1, memory=False, size=False)
    assert torch.get_num_threads() == before
    assert prof.threads == 1 and prof.latency_runs == 3
    for value in (prof.latency_ms, prof.latency_p10_ms, prof.latency_p90_ms):
        assert isinstance(value, float) and value > 0
    assert prof.latency_p10_ms <= prof.latency_ms <= prof.latency_p90_ms
    assert "latency" in prof.summary()


def test_profile_leaves_the_model_untouched():
    model = conv_linear().train()
    model[4].eval()  # mixed modes must come back exactly
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pk.profile(model, X, runs=2, warmup=1)
    assert model.training and model[0].training and not model[4].training
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name  # BatchNorm statistics not updated
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_kwargs_and_forward_fn():
    class KeywordNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x, *, scale=1.0):
            return {"logits": self.fc(x) * scale}

    model = KeywordNet()
    x = torch.randn(5, 4)
    by_kwargs = pk.profile(model, (x,), {"scale": 2.0}, latency=False, memory=False, size=False)
    by_fn = pk.profile(
        model,
        x,
        forward_fn=lambda m, inputs: m(*inputs)["logits"],
        runs=2,
        warmup=0,
        memory=False,
        size=False,
    )
    assert by_kwargs.macs == by_fn.macs == 5 * 4 * 3
    assert by_fn.batch_size == 5
    with pytest.raises(ValueError, match="forward_fn or example_kwargs"):
        pk.profile(model, x, {"scale": 2.0}, forward_fn=lambda m, i: m(*i))


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(TypeError, match="nn.Module"):
        pk.profile("resnet", X)
    with pytest.raises(ValueError, match="runs"):
        pk.profile(conv_linear(), X, runs=0, memory=False, size=False)
    with pytest.raises(ValueError, match="threads"):
        pk.profile(conv_linear(), X, threads=0, memory=False, size=False)


def test_torch_prune_masks_count_as_zeros():
    import torch.nn.utils.prune as torch_prune

    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    torch_prune.l1_unstructured(model[0], "weight", amount=0.75)  # weight = weight_orig * mask
    prof = pk.profile(model, torch.randn(3, 10), latency=False, memory=False, size=False)
    assert prof.params == 325 and prof.nonzero_params == 325 - 150
    assert prof.layers["0"]["nonzero_macs"] == 3 * 10 * 20 // 4


def test_module_of_an_exported_program_can_be_profiled():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    module = torch.export.export(model, (torch.randn(3, 10),)).module()
    prof = pk.profile(module, torch.randn(3, 10), runs=1, warmup=0, memory=False, size=False)
    assert prof.macs == 3 * 10 * 20 + 3 * 20 * 5 and prof.latency_ms > 0


class _ClassTokenBlock(nn.Module):
    """A block called with a parameter-derived input (CaiT's class token), which requires grad."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.block = nn.MultiheadAttention(8, 2, batch_first=True)
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return self.proj(self.block(cls, x, x, need_weights=False)[0])


def test_module_inputs_that_require_grad_are_counted():
    profile = pk.profile(_ClassTokenBlock(), torch.randn(2, 5, 8), latency=False, memory=False)
    # projections of the query (1 token) and of keys/values (5 tokens each), scores, output
    assert profile.macs == 2 * (1 * 8 * 8 + 2 * 5 * 8 * 8 + 2 * 1 * 5 * 8 + 1 * 8 * 8 + 1 * 8 * 8)
