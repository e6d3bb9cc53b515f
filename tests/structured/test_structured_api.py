import math
import warnings

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.structured import Plan, VerificationError
from prunekit.train import fit


def _prune_eagerly(model: nn.Module, inputs, **kwargs):
    """`pk.prune` that fails on the exported-graph fallback: the user's own module must come back,
    verified."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = pk.prune(model, inputs, **kwargs)
    assert result.verified and result.model is model
    return result


def test_plan_is_a_dry_run_and_replays_on_a_fresh_model(zoo):
    model, x = zoo("residual")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = pk.plan(model, x, ratio=0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    text = plan.to_json()
    pruned, _ = zoo("residual")
    pk.prune(pruned, x, ratio=0.5)
    fresh, _ = zoo("residual", seed=1)
    result = pk.apply(fresh, Plan.from_json(text))
    assert result.model is fresh
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in pruned.state_dict().items()
    }
    fresh.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(fresh(*x), pruned(*x))


def test_ratio_zero_changes_nothing(zoo):
    model, x = zoo("seq_cnn")
    expected = model(*x)
    result = pk.prune(model, x, ratio=0.0)
    assert not result.plan.pruned_groups
    torch.testing.assert_close(model(*x), expected)


def test_ignore_keeps_output_channels(zoo):
    model, x = zoo("seq_cnn")
    pk.prune(model, x, ratio=0.5, ignore=["features.3"])
    assert model.features[3].out_channels == 16
    assert model.features[0].out_channels == 4
    assert model.fc1.out_features == 16
    model, x = zoo("seq_cnn")
    pk.prune(model, x, ratio=0.5, ignore="features.*")  # one pattern, not a list of characters
    assert model.features[3].out_channels == 16 and model.features[0].out_channels == 8
    model, x = zoo("seq_cnn")
    pk.prune(model, x, ratio=0.5, ignore=["features"])  # a container: every module in it
    widths = [m.out_channels for m in model.features if isinstance(m, nn.Conv2d)]
    assert widths == [8, 16, 16] and model.fc1.out_features == 16


def test_overrides_set_the_ratio_of_a_modules_output_channels(zoo):
    model, x = zoo("seq_cnn")  # features.0: 8 channels, features.3 and fc1: 16 and 32
    pk.prune(model, x, ratio=0.5, overrides={"features.3": 0.25, "fc1": 0.0})
    assert model.features[3].out_channels == 12  # its own filters, not the 8 channels it reads
    assert model.features[0].out_channels == 4 and model.features[7].out_channels == 8
    assert model.fc1.out_features == 32
    model, x = zoo("seq_cnn")
    pk.prune(model, x, ratio=0.0, overrides={"features.*": 0.5, "features.7": 0.75})
    widths = [m.out_channels for m in model.features if isinstance(m, nn.Conv2d)]
    assert widths == [4, 8, 4] and model.fc1.out_features == 32  # the later pattern wins
    model, x = zoo("seq_cnn")
    pk.prune(model, x, ratio=0.5, overrides={"features": 0.25})  # a container
    widths = [m.out_channels for m in model.features if isinstance(m, nn.Conv2d)]
    assert widths == [6, 12, 12] and model.fc1.out_features == 16
    model, x = zoo("seq_cnn")
    pk.prune(model, x, ratio=0.5, overrides={"fc1": 0.75}, steps=2)  # 32 -> 16 -> 8
    assert model.fc1.out_features == 8


@pytest.mark.parametrize("scope", ["local", "global", "auto"])
def test_overrides_hold_under_a_target(zoo, scope):
    model, x = zoo("seq_cnn")
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g))]
    dense = pk.profile(model, x, latency=False, memory=False, size=False).macs
    result = pk.prune(
        model, x, target={"macs": 0.5}, scope=scope, data=data, overrides={"features.3": 0.0}
    )
    assert model.features[3].out_channels == 16
    macs = pk.profile(model, x, latency=False, memory=False, size=False).macs
    assert macs / dense == pytest.approx(0.5, rel=0.02) and result.report["target"]["met"]


@pytest.mark.parametrize(
    ("norm", "attribute", "pruned"),
    [
        (nn.InstanceNorm1d(16), "num_features", 8),
        (nn.GroupNorm(4, 16, affine=False), "num_channels", 8),
        (nn.LayerNorm(16, elementwise_affine=False), "normalized_shape", (8,)),
        (nn.BatchNorm1d(16, affine=False, track_running_stats=False), "num_features", 8),
    ],
)
def test_norms_without_parameters_learn_their_width_from_their_input(norm, attribute, pruned):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.norm, self.c2 = nn.Conv1d(4, 16, 3, padding=1), norm, nn.Conv1d(16, 4, 1)

        def forward(self, x):
            h = self.c1(x)
            if isinstance(self.norm, nn.LayerNorm):  # over channels, channels last
                h = self.norm(h.transpose(1, 2)).transpose(1, 2)
            else:
                h = self.norm(h)
            return self.c2(torch.relu(h)).mean(-1)

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 4, 10)
    _prune_eagerly(model, x, ratio=0.5)  # warnings are errors: InstanceNorm warns on a mismatch
    assert model.c1.out_channels == 8 and getattr(model.norm, attribute) == pruned
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model(torch.randn(3, 4, 10)).shape == (3, 4)


@pytest.mark.filterwarnings("ignore:.*weight_norm")  # the legacy one is deprecated, still used
def test_prelu_and_legacy_weight_norm_attributes_follow_the_pruned_sizes():
    class Vocoder(nn.Module):  # HiFi-GAN style: weight-normalised convs and PReLU
        def __init__(self):
            super().__init__()
            self.c1 = nn.utils.weight_norm(nn.Conv1d(4, 16, 7, padding=3))
            self.act = nn.PReLU(16)
            self.c2 = nn.utils.parametrizations.weight_norm(nn.Conv1d(16, 4, 1))

        def forward(self, x):
            return self.c2(self.act(self.c1(x))).mean(-1)

    torch.manual_seed(0)
    model = Vocoder().eval()
    result = pk.prune(model, torch.randn(2, 4, 20), ratio=0.5)
    assert result.verified and result.model is model
    assert (model.c1.out_channels, model.act.num_parameters, model.c2.in_channels) == (8, 8, 8)


def test_round_to_keeps_multiples(zoo):
    model, x = zoo("seq_cnn")
    pk.prune(model, x, ratio=0.6, round_to=4)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels % 4 == 0


@pytest.mark.filterwarnings("ignore:target")  # steps of 8 channels on small layers: coarse
@pytest.mark.parametrize("conv_groups", [8, 4])
def test_round_to_rounds_the_width_of_grouped_layers_not_their_channels_per_group(conv_groups):
    """A grouped conv with 8 channels per group and GroupNorm(8, 32) (4 per group): with
    round_to=8 every layer width stays a multiple of 8 while the groups still lose channels."""

    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 64, 1)
            self.b = nn.Conv2d(64, 64, 3, padding=1, groups=conv_groups)
            self.c, self.gn = nn.Conv2d(64, 32, 1), nn.GroupNorm(8, 32)
            self.out = nn.Conv2d(32, 5, 1)

        def forward(self, x):
            x = self.b(torch.relu(self.a(x)))
            return self.out(torch.relu(self.gn(self.c(torch.relu(x))))).mean((2, 3))

    torch.manual_seed(0)
    model, x = Grouped().eval(), torch.randn(2, 3, 8, 8)
    _prune_eagerly(model, x, ratio=0.5, round_to=8)  # warnings are errors: nothing unrounded
    widths = [m.out_channels for m in (model.a, model.b, model.c)]
    assert widths == [32, 32, 16] and model.b.groups == conv_groups and model.gn.num_groups == 8
    result = pk.prune(Grouped().eval(), x, target={"macs": 0.4}, round_to=8)  # refined
    convs = [m for m in (result.model.a, result.model.b, result.model.c)]
    assert all(m.out_channels % 8 == 0 for m in convs)


def test_round_to_larger_than_a_group_warns_and_names_it(zoo):
    model, x = zoo("seq_cnn")  # features.0 has 8 channels, features.3 and fc1 16
    with pytest.warns(UserWarning, match=r"round_to=16: 1 pruned group\(s\) have fewer than 16"):
        pk.prune(model, x, ratio=0.5, round_to=16)
    assert model.features[0].out_channels == 4  # pruned, not rounded
    model, x = zoo("seq_cnn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pk.prune(model, x, ratio=0.5, round_to=4)  # every group can be rounded


@pytest.mark.parametrize("key", ["macs", "params"])
def test_target_is_met_within_two_percent(zoo, key):
    from torch.utils.flop_counter import FlopCounterMode

    def cost(m, x):
        if key == "params":
            return sum(p.numel() for p in m.parameters())
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            m(*x)
        return counter.get_total_flops()

    model, x = zoo("seq_cnn")
    dense = cost(model, x)
    pk.prune(model, x, target={key: 0.5})
    assert abs(cost(model, x) / dense - 0.5) <= 0.02 * 0.5 + 0.01


class _MostlyRecurrent(nn.Module):
    """Most of the MACs in a GRU, an op without a channel rule: they cannot be pruned."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(20, 32, 3, padding=1)
        self.rnn = nn.GRU(32, 128, batch_first=True)
        self.fc = nn.Linear(128, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.conv(x).relu().transpose(1, 2))
        return self.fc(h[:, -1])


def test_a_target_out_of_reach_warns_and_says_why():
    torch.manual_seed(0)
    model = _MostlyRecurrent().eval()
    with pytest.warns(UserWarning, match=r"target \{'macs': 0.5\} not reached.*block pruning"):
        result = pk.prune(model, (torch.randn(1, 20, 50),), target={"macs": 0.5})
    assert result.verified and result.report["target"]["met"] is False
    assert result.report["target"]["predicted_kept"] > 0.9
    with pytest.warns(UserWarning, match="nothing was pruned: no channel group.*block pruning"):
        pk.prune(model, (torch.randn(1, 20, 50),), ratio=0.5)


def test_channels_kept_whole_by_a_rule_are_named():
    """An op with a rule can still keep channels whole (torch.max over channels returns
    indices, as in CBAM's spatial attention): the summary and the warning say which and why."""

    class SpatialAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.gate = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(1, 1, 7, padding=3)
            self.out = nn.Conv2d(16, 8, 1)

        def forward(self, x):
            x = self.conv(x)
            strongest, _ = torch.max(x, dim=1, keepdim=True)
            return self.out(x * torch.sigmoid(self.gate(strongest))).mean((2, 3))

    model, x = SpatialAttention().eval(), torch.randn(2, 3, 8, 8)
    summary = pk.trace(model, x).summary()
    assert "kept whole by an op's rule" in summary and "arg-reduction returns indices: 1" in summary
    assert "kernel size" not in summary  # never channels: not reported
    with pytest.warns(
        UserWarning, match=r"nothing was pruned.*arg-reduction returns indices \(1\)"
    ):
        pk.prune(model, x, ratio=0.5)


def test_a_target_within_reach_is_marked_met(zoo, recwarn):
    model, x = zoo("seq_cnn")
    result = pk.prune(model, x, target={"macs": 0.5})
    assert result.report["target"]["met"] is True
    assert not [w for w in recwarn if "not reached" in str(w.message)]


class _SeparateProjections(nn.Module):
    """BERT's self-attention: q, k and v from their own linears, viewed with one head size."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.head_size = heads, dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_size).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        attn = nn.functional.scaled_dot_product_attention(q, k, v)
        return x + self.out(attn.transpose(1, 2).flatten(2))


@pytest.mark.parametrize("budget", [{"ratio": 0.5}, {"target": {"macs": 0.5}}])
def test_global_scope_keeps_one_head_size_for_queries_and_values(budget):
    """Global ranking would give the q/k head dims and the v head dims different counts, which
    one `head_size` cannot describe: they are tied, and the eager model is returned."""
    torch.manual_seed(0)
    model = nn.Sequential(_SeparateProjections(), _SeparateProjections()).eval()
    with torch.no_grad():  # make the q/k and the v dims rank differently
        model[0].v.weight[:, :] *= torch.linspace(0.1, 3.0, 16)[:, None]
    result = pk.prune(model, (torch.randn(1, 5, 16),), scope="global", **budget)
    assert result.verified and result.model is model
    for block in model:
        assert block.q.out_features == block.k.out_features == block.v.out_features
        assert block.q.out_features == block.heads * block.head_size < 16


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(8, 32), nn.Linear(32, 3)
        layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.enc(self.inp(x)).mean(1))


@pytest.mark.parametrize(
    "options",
    [
        {"ratio": 0.5, "scope": "global"},
        {"target": {"macs": 0.5}, "scope": "global"},
        {"ratio": 0.3},  # 32 -> 23 and 8 -> 6 per head would not match
        {"ratio": 0.3, "attention": "heads"},
    ],
)
@pytest.mark.filterwarnings("ignore:target")  # width moves 4 channels at a time: coarse MACs
def test_multihead_attention_keeps_its_width_equal_to_heads_times_head_dims(options):
    torch.manual_seed(0)
    model = _Encoder().eval()
    result = pk.prune(model, (torch.randn(1, 6, 8),), **options)
    assert result.verified and result.model is model
    for layer in model.enc.layers:
        attn = layer.self_attn
        assert attn.embed_dim == attn.num_heads * attn.head_dim == model.inp.out_features < 32


class _HeadsFromInputWidth(nn.Module):
    """Swin's window attention: head dims computed as C // num_heads from the input's width."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.num_heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = (
            self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        )
        y = nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.proj(y.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(x)


def test_heads_sized_from_the_input_width_stay_eager_under_global_scope():
    """Global ranking gives the stream and the head dims different fractions, which code
    computing `c // num_heads` cannot run: prunekit plans again with them tied."""
    torch.manual_seed(0)
    blocks = [_HeadsFromInputWidth(), _HeadsFromInputWidth()]
    model = nn.Sequential(nn.Linear(8, 16), *blocks, nn.Linear(16, 4)).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pk.prune(model, (torch.randn(1, 6, 8),), ratio=0.5, scope="global")
    assert result.verified and result.model is model
    assert not [w for w in caught if "exported graph" in str(w.message)]
    for block in blocks:
        assert block.qkv.out_features == 3 * model[0].out_features < 3 * 16


def test_global_scope_varies_ratios(zoo):
    model, x = zoo("seq_cnn")
    result = pk.prune(model, x, ratio=0.5, scope="global")
    assert result.verified
    removed = {g.key: g.removed / g.size for g in result.plan.groups}
    assert len(set(round(r, 3) for r in removed.values())) > 1


def test_attention_prunes_head_dims_or_heads_never_both(zoo):
    model, x = zoo("attention")
    result = pk.prune(model, x, ratio=0.5)
    assert result.verified
    assert model.qkv.out_features == 3 * 4 * 4  # 4 heads x 4 of 8 dims
    assert model.heads == 4 and model.head_dim == 4
    model, x = zoo("attention")
    pk.prune(model, x, ratio=0.5, attention="heads")
    assert model.qkv.out_features == 3 * 2 * 8 and model.heads == 2


def test_fallback_returns_a_verified_exported_graph():
    class FixedReshape(nn.Module):
        """Reshapes with the input's width, so its Python code cannot run once pruned."""

        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = nn.Linear(8, 3)

        def forward(self, x):
            h = torch.relu(self.a(x)).reshape(x.shape[0], 2, x.shape[1] // 2)
            return self.b(h.flatten(1))

    torch.manual_seed(0)
    model, x = FixedReshape().eval(), torch.randn(2, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pk.prune(model, x, ratio=0.5)
    assert result.model is not model and result.report["fallback"] == "exported-graph"
    assert result.verified and result.model(x).shape == (2, 3)
    (message,) = [str(w.message) for w in caught if "exported graph" in str(w.message)]
    # where the user's code failed, and why
    assert "test_structured_api.py:" in message and "RuntimeError: shape '[2, 2, 4]'" in message
    assert model.a.out_features == 8  # the user's model is untouched
    # eval mode is baked in: eval() is a no-op (users call it by reflex), train() says why not
    assert result.model.eval() is result.model and not result.model.training
    with pytest.raises(NotImplementedError, match="fine-tune the eager model"):
        result.model.train()
    with pytest.raises(TypeError, match="prune the eager model"):
        fit(result.model, [(x, torch.tensor([0, 1]))], progress=False)


def test_a_failed_retry_with_tied_widths_keeps_the_verified_fallback(monkeypatch):
    """When the eager model fails and the re-plan with tied projection widths fails too, prune
    returns the verified exported-graph fallback of the first plan instead of raising (calls:
    the eager candidates, the retry, the fallback)."""
    import prunekit.structured.api as api

    class LiteralSplit(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.fc = nn.Linear(6, 12), nn.Linear(12, 3)

        def forward(self, x):
            a, b = torch.split(torch.relu(self.stem(x)), [4, 8], dim=1)
            return self.fc(torch.cat([b, a], 1))

    calls, original = [], api._apply_verified

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise VerificationError("the retried plan does not verify")
        return original(*args, **kwargs)

    monkeypatch.setattr(api, "_apply_verified", second_fails)
    monkeypatch.setattr(api, "tie_projection_widths", lambda graph, plan: True)
    torch.manual_seed(0)
    model, x = LiteralSplit().eval(), torch.randn(2, 6)
    with pytest.warns(UserWarning, match="exported graph"):
        result = pk.prune(model, x, ratio=0.5)
    assert len(calls) == 3 and result.verified and result.report["fallback"] == "exported-graph"
    assert model.stem.out_features == 12  # the user's model is untouched


def test_failed_verification_restores_the_model(zoo, monkeypatch):
    model, x = zoo("residual")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attrs = {n: dict(vars(m)) for n, m in model.named_modules()}
    monkeypatch.setattr("prunekit.structured.api.verify_candidate", lambda *a, **k: (1.0, None))
    with pytest.raises(VerificationError, match="left unchanged"):
        pk.prune(model, x, ratio=0.5)
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in state.items()
    }
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    for n, m in model.named_modules():
        assert m.__dict__.get("in_channels") == attrs[n].get("in_channels")


def test_surgery_failure_restores_the_model(zoo, monkeypatch):
    model, x = zoo("seq_cnn")
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(
        "prunekit.structured.api.update_module_attributes_hook", boom, raising=False
    )
    monkeypatch.setattr("prunekit.structured.surgery.update_module_attributes", boom)
    with pytest.raises(RuntimeError, match="boom"):
        pk.prune(model, x, ratio=0.5, verify=False)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert model.features[0].out_channels == 8


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ratio": 1.0}, ValueError, r"\[0, 1\)"),
        ({"ratio": -0.1}, ValueError, r"\[0, 1\)"),
        ({"ratio": "half"}, TypeError, "number"),
        ({"ratio": 0.5, "importance": "l3"}, ValueError, "unknown importance"),
        ({"ratio": 0.5, "ignore": ["nope*"]}, ValueError, "match no module"),
        ({"ratio": 0.5, "overrides": {"nope": 0.5}}, ValueError, "overrides patterns match no"),
        ({"ratio": 0.5, "overrides": {"fc1": 1.0}}, ValueError, r"overrides\['fc1'\]"),
        ({"ratio": 0.5, "overrides": {"fc1": "all"}, "steps": 2}, ValueError, r"\[0, 1\)"),
        ({"ratio": 0.5, "overrides": ["fc1"]}, TypeError, "a dict"),
        ({"ratio": 0.5, "scope": "world"}, ValueError, "scope"),
        ({"target": {"flops": 0.5}}, ValueError, "unknown target"),
        ({"target": {"macs": 1.5}}, ValueError, r"\(0, 1\]"),
        ({}, ValueError, "exactly one"),
        ({"ratio": 0.5, "attention": "both"}, ValueError, "attention"),
    ],
)
def test_bad_arguments(zoo, kwargs, error, match):
    model, x = zoo("seq_cnn")
    with pytest.raises(error, match=match):
        pk.prune(model, x, **kwargs)


def test_inputs_that_do_not_fit(zoo):
    model, _ = zoo("seq_cnn")
    with pytest.raises(ValueError, match="example_inputs fit the model"):
        pk.prune(model, torch.randn(1, 5, 8, 8), ratio=0.5)


def test_data_driven_criterion_without_data_is_explained(zoo):
    from prunekit.importance import Importance, register

    @register("needs_data_test")
    class NeedsData(Importance):
        name = "needs_data_test"
        requires_data = True

    model, x = zoo("seq_cnn")
    with pytest.raises(ValueError, match="data="):
        pk.prune(model, x, ratio=0.5, importance="needs_data_test")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_ignoring_the_embedding_keeps_the_hidden_size(family):
    """Embeddings ([vocab, dim]) and GPT-2's Conv1D ([in, out]) carry outputs on weight dim 1."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if family == "llama":
        config = transformers.LlamaConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=64, max_position_embeddings=16,
        )  # fmt: skip
        model, hidden, mlp = (
            transformers.LlamaForCausalLM(config).eval(),
            "model.embed_tokens",
            "up_proj",
        )
    else:
        config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4)
        model, hidden, mlp = transformers.GPT2LMHeadModel(config).eval(), "transformer.wte", "c_fc"
    ids = torch.randint(0, 64, (1, 8))
    plan = pk.plan(model, (ids,), ratio=0.5, ignore=[hidden], example_kwargs={"use_cache": False})
    pruned = " ".join(m for g in plan.pruned_groups for m in g.members)
    assert hidden not in pruned  # the hidden size (every member of the embedding's group) stays
    assert mlp in pruned  # while the MLP channels go


def test_gpt2_keeping_its_hidden_size_still_runs_eagerly():
    """q, k, v split by `split_size`, and Conv1D's `nf`, follow the pruned head dims."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 64, (1, 8))
    kwargs = {"use_cache": False}
    # GPT-2's head size is n_embd / n_head: narrower heads with n_embd kept have no config
    with pytest.warns(UserWarning, match="save_pretrained.*pk.save"):
        result = pk.prune(
            model, (ids,), ratio=0.5, ignore=["transformer.wte"], example_kwargs=kwargs
        )
    assert result.verified and result.model is model  # the eager model, not the graph fallback
    attn = model.transformer.h[0].attn
    assert attn.c_attn.weight.shape == (32, 48) and attn.c_proj.nf == 32
    generated = model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 10)


class _RotaryAttention(nn.Module):
    """Self-attention with rotary embeddings computed in the forward pass, as transformers >= 5.24
    does (cos/sin from an inv_freq buffer, concatenated with itself: head dims are cat(half,
    half)), with GQA: 4 query heads sharing 2 KV heads of 8 dims."""

    def __init__(self, dim=16, heads=4, kv_heads=2, head_dim=8):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q = nn.Linear(dim, heads * head_dim, bias=False)
        self.k = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.v = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.o = nn.Linear(heads * head_dim, dim, bias=False)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @staticmethod
    def _rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
        return torch.cat((-x2, x1), dim=-1)

    def forward(self, x):
        b, t, _ = x.shape
        freqs = torch.arange(t, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        q = self.q(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        q = q * cos + self._rotate_half(q) * sin
        k = k * cos + self._rotate_half(k) * sin
        k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
        v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        attn = torch.softmax(q @ k.transpose(-1, -2) / self.head_dim**0.5, dim=-1)
        return self.o((attn @ v).transpose(1, 2).reshape(b, t, -1))


@pytest.mark.parametrize("attention", ["dims", "heads"])
def test_rotary_head_dims_stay_whole_when_heads_go(attention):
    """Rotary embeddings derive values from the head size, so whole KV groups go (by default
    too) and q, k and v keep their 8 head dims, on the eager model."""
    torch.manual_seed(0)
    model, x = _RotaryAttention().eval(), torch.randn(1, 5, 16)
    result = pk.prune(model, x, ratio=0.5, attention=attention, ignore=["o"])
    assert result.verified and result.model is model
    assert (model.q.out_features, model.k.out_features, model.v.out_features) == (16, 8, 8)


class _ScaledHalves(nn.Module):
    """Size-carrying attributes the way timm writes them: a layer scale viewed to a tuple
    attribute `shape = (dim, 1, 1)`, and a split whose piece is derived (`chs // 2`)."""

    def __init__(self, chs: int = 8):
        super().__init__()
        self.chs = chs
        self.conv = nn.Conv2d(3, chs, 3, padding=1)
        self.shape = (chs, 1, 1)
        self.scale = nn.Parameter(torch.rand(chs))
        self.head = nn.Conv2d(chs // 2, 4, 1)

    def forward(self, x):
        h = self.conv(x) * self.scale.view(self.shape)
        a, b = h.split(self.chs // 2, dim=1)
        return self.head(torch.relu(a) + b)


def test_tuple_and_derived_size_attributes_follow_the_pruned_sizes():
    torch.manual_seed(0)
    model, x = _ScaledHalves().eval(), torch.randn(1, 3, 6, 6)
    _prune_eagerly(model, x, ratio=0.5)
    assert model.conv.out_channels == 4 and model.shape == (4, 1, 1) and model.chs == 4
    assert model(x).shape == (1, 4, 6, 6)


class _ChannelsLastScale(nn.Module):
    """timm's MetaFormer layer scale on channels-last tokens: `shape = (dim,)`, a 1-tuple."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, dim), nn.Linear(dim, 4)
        self.shape = (dim,)
        self.scale = nn.Parameter(torch.rand(dim))

    def forward(self, x):
        return self.fc2(self.fc1(x) * self.scale.view(self.shape))


def test_one_tuple_shape_attributes_follow_the_pruned_size():
    torch.manual_seed(0)
    model, x = _ChannelsLastScale(), torch.randn(2, 6)
    _prune_eagerly(model, (x,), ratio=0.5)
    assert model.shape == (8,)


class _CachedScale(nn.Module):
    """Caches a tensor derived from a parameter in eval mode and clears it in `train()`, as
    timm's attention-bias caches do."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)
        self.scale = nn.Parameter(torch.rand(8) + 0.5)
        self.cache: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True):
        super().train(mode)
        self.cache = {}
        return self

    def forward(self, x):
        if self.training or torch.compiler.is_compiling():
            scale = self.scale * 2
        else:
            scale = self.cache.setdefault("scale", self.scale.detach() * 2)
        return self.b(torch.relu(self.a(x)) * scale)


def test_caches_cleared_by_train_do_not_outlive_pruning():
    torch.manual_seed(0)
    model, x = _CachedScale().eval(), torch.randn(3, 4)
    with torch.no_grad():
        model(x)  # fills the cache at the full width
    pk.prune(model, x, ratio=0.5)
    assert model.a.out_features == 4 and not model.training
    assert model(x).shape == (3, 2)  # the stale 8-wide cache would not broadcast


class _SplitAndRenorm(nn.Module):
    """Pieces split by attribute sizes (`split([self.key_dim, self.val_dim])`) and a norm over
    flattened tokens reshaped back with `reshape_as`, both as timm's LeViT writes them."""

    def __init__(self, key_dim: int = 4, val_dim: int = 8):
        super().__init__()
        self.key_dim, self.val_dim = key_dim, val_dim
        self.kv = nn.Linear(6, key_dim + val_dim)
        self.k_out, self.v_out = nn.Linear(key_dim, 3), nn.Linear(val_dim, 3)
        self.up = nn.Linear(3, 10)
        self.bn = nn.BatchNorm1d(10)
        self.head = nn.Linear(10, 2)

    def forward(self, x):  # x: [batch, tokens, 6]
        k, v = self.kv(x).split([self.key_dim, self.val_dim], dim=-1)
        h = self.up(self.k_out(torch.relu(k)) + self.v_out(v))
        return self.head(self.bn(h.flatten(0, 1)).reshape_as(h))


def test_split_sizes_and_reshape_as_follow_the_pruned_sizes():
    torch.manual_seed(0)
    model, x = _SplitAndRenorm().eval(), torch.randn(2, 5, 6)
    _prune_eagerly(model, x, ratio=0.5)
    # reshape_as no longer blocks the norm's channels; split sizes follow the pieces
    assert model.bn.num_features == 5 and (model.key_dim, model.val_dim) == (2, 4)
    assert model(x).shape == (2, 5, 2)


@pytest.mark.parametrize(("attention", "sizes"), [(None, (4, 2)), ("heads", (2, 4))])
def test_equal_head_count_and_head_dim_are_told_apart_by_the_source(zoo, attention, sizes):
    """heads == head_dim == 4: only one of them is pruned, so their value cannot say which
    attribute changes; `view(b, t, 3, self.heads, self.head_dim)` in the source does."""
    attention_class = type(zoo("attention")[0])
    torch.manual_seed(0)
    model = attention_class(dim=24, hidden=16, heads=4).eval()
    x = torch.randn(2, 5, 24)
    options = {"attention": attention} if attention else {}
    _prune_eagerly(model, x, ratio=0.5, **options)
    assert (model.heads, model.head_dim) == sizes


class _ZeroedKeyBias(nn.Module):
    """Swin V2's attention: the key bias is zeroed through a view of a cloned bias, and the head
    size is read from the input (`C // heads`), right when hidden and head sizes shrink alike."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(6, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        b, n, c = x.shape
        bias = self.qkv.bias.clone()
        length = bias.numel() // 3
        bias[length : 2 * length].zero_()
        qkv = nn.functional.linear(x, self.qkv.weight, bias)
        qkv = qkv.reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k = nn.functional.normalize(qkv[0], dim=-1), nn.functional.normalize(qkv[1], dim=-1)
        attn = (q @ k.transpose(-2, -1)).softmax(-1)  # cosine attention: the key bias matters
        y = (attn @ qkv[2]).transpose(1, 2).reshape(b, n, c)
        return self.out(self.proj(y) + x)


def test_in_place_zeroing_through_a_view_is_pruned_eagerly():
    torch.manual_seed(0)
    model, x = _ZeroedKeyBias(), torch.randn(2, 5, 6)
    _prune_eagerly(model, (x,), ratio=0.5)
    assert (model.embed.out_features, model.qkv.out_features) == (8, 24)


class _InPlaceShift(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h.add_(1.0)  # writes the removed channels too: the reference must remove them again
        return self.fc2(h)


def test_in_place_updates_of_pruned_channels_verify():
    torch.manual_seed(0)
    model, x = _InPlaceShift(), torch.randn(3, 8)
    result = pk.prune(model, (x,), ratio=0.5)
    assert result.verified and model.fc1.out_features == 8


class _RopeTable(nn.Module):
    """Splits a plain tensor attribute (EVA-02's rotary table: a constant of the graph, not a
    parameter or buffer) and ties the attention's inner size to its input size, so that the
    pruned model is the exported graph."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(8, 24), nn.Linear(8, 8)
        self.rope = torch.randn(5, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        sin, cos = self.rope.split(4, dim=-1)
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, -1).permute(2, 0, 3, 1, 4).unbind(0)
        y = torch.softmax((q * cos[:n]) @ k.transpose(-2, -1), -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, c)) + sin.sum()


def test_splits_of_graph_constants_survive_the_graph_fallback():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = pk.prune(_RopeTable(), (torch.randn(2, 5, 8),), ratio=0.5)
    assert result.verified and isinstance(result.model, torch.fx.GraphModule)


class _PooledQueryAttention(nn.Module):
    """Hiera's attention: q max-pooled over strided tokens, then sdpa with its default scale."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q = q.reshape(b, self.heads, 2, n // 2, -1).amax(dim=2)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n // 2, -1))


def test_pooled_queries_keep_the_attention_temperature():
    torch.manual_seed(0)
    model = _PooledQueryAttention()
    result = pk.prune(model, (torch.randn(2, 6, 16),), ratio=0.5)  # head dims 8 -> 4
    assert result.verified and result.model is model and model.qkv.out_features == 24
    assert result.report["temperature_folds"] == 1


class _HandWrittenAttention(nn.Module):
    """Attention as tutorials and nanoGPT write it: the scores scaled on their way to softmax."""

    def __init__(self, scale: str, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.scale, self.heads, self.head_size = scale, heads, dim // heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (
            p(x).view(b, n, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v)
        )
        scores = q @ k.transpose(-2, -1)
        if self.scale == "size":  # follows the pruned head size
            scores = scores * (1.0 / math.sqrt(k.size(-1)))
        elif self.scale == "attribute":
            scores = scores / math.sqrt(self.head_size)
        else:  # a literal: the temperature stays as it is
            scores = scores * 0.3535533906
        scores = scores.masked_fill(torch.ones(n, n).tril() == 0, float("-inf"))
        return self.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize("scale", ["size", "attribute", "literal"])
def test_scores_scaled_in_user_code_keep_the_attention_temperature(scale):
    torch.manual_seed(0)
    model = _HandWrittenAttention(scale).eval()
    result = pk.prune(model, (torch.randn(1, 5, 16),), ratio=0.5)  # head dims 8 -> 4
    assert result.verified and result.model is model and model.q.out_features == 8


class _CachesABias(nn.Module):
    """timm's EfficientFormer: an eval-mode forward caches a bias computed from a parameter,
    a tensor with grad history that copy.deepcopy refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)
        self.bias_table = nn.Parameter(torch.randn(8))
        self.cache: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self.cache.setdefault("bias", self.bias_table * 2)
        return self.b(self.a(x).relu()) + self.cache.get("bias", self.bias_table).sum()


@pytest.mark.filterwarnings("ignore:.*weight_norm")  # the legacy one is deprecated, still used
def test_models_holding_tensors_with_grad_history_are_copied_and_pruned():
    torch.manual_seed(0)
    model = _CachesABias().eval()
    model(torch.randn(1, 4))  # fills the cache, with grad history
    legacy = nn.Sequential(nn.utils.weight_norm(nn.Linear(4, 8)), nn.ReLU(), nn.Linear(8, 2))
    legacy(torch.randn(1, 4))  # the legacy weight norm keeps a computed `weight` attribute
    result = pk.prune(model, (torch.randn(1, 4),), ratio=0.5)
    assert result.verified and result.model is model and model.a.out_features == 4
    assert pk.trace(legacy, torch.randn(1, 4)) is not None


class _MixedKernels(nn.Module):
    """timm's MixedConv2d: channels split by a list attribute, one depthwise conv per piece."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = nn.Conv2d(3, 12, 1), nn.Conv2d(12, 2, 1)
        self.splits = [6, 4, 2]
        self.convs = nn.ModuleList(
            nn.Conv2d(c, c, k, padding=k // 2, groups=c) for c, k in zip(self.splits, (1, 3, 5))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(self.inp(x), self.splits, 1)
        return self.out(torch.cat([conv(p) for conv, p in zip(self.convs, pieces)], 1))


def test_attributes_of_a_submodule_called_through_a_method_follow_the_pruned_sizes():
    """The parent calls `self.rel.get_bias()` (timm's relative position bias in CoAtNet and
    MaxViT): the shape attribute read there belongs to the submodule, not to the caller."""

    class RelBias(nn.Module):
        def __init__(self, n, heads):
            super().__init__()
            self.table = nn.Parameter(torch.randn(n * n, heads))
            self.bias_shape = (n, n, heads)

        def get_bias(self):
            return self.table.view(self.bias_shape).permute(2, 0, 1).unsqueeze(0)

    class Attention(nn.Module):
        def __init__(self, dim=32, heads=4, n=6):
            super().__init__()
            self.heads, self.head_dim = heads, dim // heads
            self.qkv, self.proj, self.rel = (
                nn.Linear(dim, 3 * dim),
                nn.Linear(dim, dim),
                RelBias(n, heads),
            )

        def forward(self, x):
            B, N, C = x.shape
            q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            attn = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5 + self.rel.get_bias()
            return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(B, N, -1))

    torch.manual_seed(0)
    model = Attention().eval()
    _prune_eagerly(model, torch.randn(2, 6, 32), ratio=0.5, attention="heads")
    assert model.heads == 2 and model.rel.bias_shape == (6, 6, 2)


def test_a_list_attribute_of_split_sizes_follows_the_pruned_sizes():
    torch.manual_seed(0)
    model = _MixedKernels()
    _prune_eagerly(model, (torch.randn(1, 3, 8, 8),), ratio=0.5)
    assert model.splits == [3, 2, 1]


class _StandardizedConv(nn.Conv2d):
    """Weight standardisation as timm's ScaledStdConv2d (NF-ResNet) writes it: statistics of each
    filter over its fan-in, which shrinks when input channels go."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.reshape(1, self.out_channels, -1)
        w = nn.functional.batch_norm(w, None, None, training=True, momentum=0.0, eps=1e-6)
        return nn.functional.conv2d(x, w.reshape_as(self.weight), self.bias, padding=self.padding)


def test_weight_standardisation_is_verified_over_the_kept_fan_in():
    torch.manual_seed(0)
    model = nn.Sequential(_StandardizedConv(3, 8, 3), nn.ReLU(), _StandardizedConv(8, 4, 1))
    result = pk.prune(model.eval(), (torch.randn(1, 3, 10, 10),), ratio=0.5)
    assert result.verified and result.model is model and model[2].in_channels == 4


class _Star(nn.Module):
    """StarNet's star operation: a product of two branches, which squares activations."""

    def __init__(self, dim: int = 8, hidden: int = 16) -> None:
        super().__init__()
        self.f1, self.f2, self.g = (
            nn.Linear(dim, hidden),
            nn.Linear(dim, hidden),
            nn.Linear(hidden, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.g(torch.relu(self.f1(x)) * self.f2(x))


def test_models_that_overflow_float32_are_verified_in_float64():
    torch.manual_seed(0)
    model = nn.Sequential(*[_Star() for _ in range(10)], nn.Linear(8, 2))  # randomised: > 1e38
    result = pk.prune(model, (torch.randn(2, 8),), ratio=0.5)
    assert result.verified and result.max_error < 1e-10 and model[0].f1.out_features == 8


def test_half_precision_models_are_verified_in_float64():
    torch.manual_seed(0)
    layers, width = [], 3
    for out in (32, 64, 64, 64):  # deep enough for float16 rounding to exceed 1e-4
        layers += [nn.Conv2d(width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        width = out
    model = nn.Sequential(*layers, nn.Conv2d(width, 4, 1)).half()
    result = pk.prune(model, (torch.randn(1, 3, 12, 12).half(),), ratio=0.5)
    assert result.verified and result.max_error < 1e-10
    assert model[0].weight.dtype == torch.float16 and model[3].in_channels == 16


class _PartialShortcut(nn.Module):
    """RexNet's bottleneck: the shortcut joins the first `in_channels` outputs only, sliced with
    the attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.in_channels = 8
        self.inp, self.conv, self.out = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 12, 1), nn.Conv2d(12, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.inp(x)
        y = self.conv(shortcut)
        y = torch.cat([y[:, 0 : self.in_channels] + shortcut, y[:, self.in_channels :]], dim=1)
        return self.out(y)


def test_slice_bounds_held_in_attributes_follow_the_pruned_sizes():
    torch.manual_seed(0)
    model = _PartialShortcut()
    _prune_eagerly(model, (torch.randn(1, 3, 4, 4),), ratio=0.5)
    assert model.in_channels == 4


class _PartialSplit(nn.Module):
    """SHViT's single-head attention: the first `pdim` channels are split off, the rest sized by
    `self.dim - self.pdim`."""

    def __init__(self) -> None:
        super().__init__()
        self.dim, self.pdim = 12, 4
        self.inp, self.mix, self.out = nn.Conv2d(3, 12, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(12, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = torch.split(self.inp(x), [self.pdim, self.dim - self.pdim], dim=1)
        return self.out(torch.cat([self.mix(x1), x2], dim=1))


def test_a_split_total_held_in_an_attribute_follows_the_pruned_size():
    torch.manual_seed(0)
    model = _PartialSplit()
    _prune_eagerly(model, (torch.randn(1, 3, 4, 4),), ratio=0.5)
    assert (model.dim, model.pdim) == (6, 2)


class _ConvNormAttention(nn.Module):
    """iFormer's single-head attention: q and k from 1x1 conv + BatchNorm, sdpa's default scale."""

    def __init__(self, dim: int = 8, qk: int = 8) -> None:
        super().__init__()
        self.q = nn.Sequential(nn.Conv2d(dim, qk, 1), nn.BatchNorm2d(qk))
        self.k = nn.Sequential(nn.Conv2d(dim, qk, 1), nn.BatchNorm2d(qk))
        self.v = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = (f(x).flatten(2).transpose(-1, -2).unsqueeze(1) for f in (self.q, self.k, self.v))
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return y.transpose(-1, -2).reshape(b, c, h, w)


def test_conv_and_norm_projections_keep_the_attention_temperature():
    torch.manual_seed(0)
    model = _ConvNormAttention().eval()
    result = pk.prune(model, (torch.randn(1, 8, 3, 3),), ratio=0.5)
    assert result.verified and result.model is model and model.q[0].out_channels == 4
    assert result.report["temperature_folds"] == 1


class _ConcatenatedBias(nn.Module):
    """BEiT's attention: the qkv bias is concatenated from q_bias, a zero k_bias buffer and
    v_bias; sdpa's default scale."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.rand(dim)), nn.Parameter(torch.rand(dim))
        self.register_buffer("k_bias", torch.zeros(dim), persistent=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
        qkv = nn.functional.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, -1))


def test_a_concatenated_qkv_bias_is_folded_with_its_weight():
    torch.manual_seed(0)
    model = _ConcatenatedBias()
    result = pk.prune(model, (torch.randn(2, 5, 16),), ratio=0.5)  # head dims 8 -> 4
    assert result.verified and result.model is model and model.q_bias.shape == (8,)


class _HeadsInBatch(nn.Module):
    """BoTNet's attention: heads folded into the batch (`b * self.heads`), queries also scored
    against a relative-position table along their head dim. The folded size is a product, not an
    attribute: `heads` must follow it. `fixed_width` writes the output width as a number, which
    only the graph fallback can change."""

    def __init__(self, dim: int = 8, heads: int = 4, fixed_width: bool = False) -> None:
        super().__init__()
        self.heads, self.head_dim, self.fixed_width = heads, dim // heads, fixed_width
        self.qkv, self.proj = nn.Conv2d(dim, 3 * dim, 1), nn.Conv2d(dim, dim, 1)
        self.rel = nn.Parameter(torch.randn(5, self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=1)
        q = q.reshape(b * self.heads, self.head_dim, -1).transpose(1, 2)
        k = k.reshape(b * self.heads, self.head_dim, -1)
        v = v.reshape(b * self.heads, self.head_dim, -1).transpose(1, 2)
        bias = (q @ self.rel.t()).mean(-1, keepdim=True)
        y = ((q @ k + bias).softmax(-1) @ v).transpose(1, 2)
        return self.proj(y.reshape(b, 8 if self.fixed_width else -1, h, w))


def test_heads_folded_into_the_batch_follow_the_pruned_head_count():
    torch.manual_seed(0)
    model, x = _HeadsInBatch().eval(), torch.randn(2, 8, 3, 3)
    result = _prune_eagerly(model, (x,), ratio=0.5, attention="heads")
    assert model.heads == 2 and model.heads * model.head_dim == model.qkv.out_channels // 3
    assert model.rel.shape[1] == model.head_dim and result.max_error < 1e-4


def test_heads_folded_into_the_batch_are_rewritten_in_the_graph_fallback():
    torch.manual_seed(0)
    model, x = _HeadsInBatch(fixed_width=True).eval(), torch.randn(2, 8, 3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = pk.prune(model, (x,), ratio=0.5, attention="heads")
    assert result.verified and isinstance(result.model, torch.fx.GraphModule)
    assert result.model(x).shape == (2, 8, 3, 3) and model.heads == 4


def test_a_retry_with_tied_widths_comes_before_the_fallback(monkeypatch):
    """Swin-like code (heads sized from the input width) verifies after the re-plan with tied
    widths: the exported-graph fallback, whose capture with free sizes took a minute on
    Swin, is never built."""
    import torchvision

    from prunekit.structured import fallback

    built = []
    monkeypatch.setattr(fallback, "_export_free_sizes", lambda graph: built.append(1) or {})
    torch.manual_seed(0)
    model = torchvision.models.swin_t(num_classes=10).eval()
    result = pk.prune(model, torch.randn(1, 3, 64, 64), ratio=0.3)
    assert result.verified and "fallback" not in result.report and not built


class _GatedByLiterals(nn.Module):
    """A small gate whose 8 outputs the code views as `(2, 4)` (WavLM's gated relative
    position bias), beside a wide MLP: the gate's size is a number in the code."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.gate = nn.Linear(16, 32), nn.Linear(32, 8)
        self.up, self.down = nn.Linear(32, 128), nn.Linear(128, 16)

    def forward(self, x):
        b, n, _ = x.shape
        h = torch.relu(self.inp(x))  # a prunable width feeds the gate
        gates = torch.sigmoid(self.gate(h).view(b, n, 2, 4).sum(-1))  # [b, n, 2]
        return self.down(torch.relu(self.up(h))) * gates[..., :1] + gates[..., 1:]


def test_groups_sized_by_numbers_in_the_code_are_kept_whole_for_an_eager_model():
    """Pruning the gate breaks `view(b, n, 2, 4)`: rather than the exported graph, the eager
    model is planned again with that group whole (a small share of what is removed)."""
    torch.manual_seed(0)
    model, x = _GatedByLiterals().eval(), torch.randn(2, 5, 16)
    with pytest.warns(UserWarning, match=r"kept whole .*writes their sizes as numbers"):
        result = pk.prune(model, x, ratio=0.5)
    assert result.verified and result.model is model and "fallback" not in result.report
    assert model.gate.out_features == 8 and model.up.out_features == 64
    assert model.inp.out_features == 16
    assert model(torch.randn(3, 7, 16)).shape == (3, 7, 16)


class _RegisterTokens(nn.Module):
    """Learned register tokens joined to the inputs ahead of fused attention (timm's DINOv2
    with registers): the tokens are keys of a softmax, not channels."""

    def __init__(self) -> None:
        super().__init__()
        self.reg = nn.Parameter(torch.randn(1, 4, 16))
        self.qkv, self.out = nn.Linear(16, 48), nn.Linear(16, 3)
        self.heads, self.head_dim = 2, 8

    def forward(self, x):
        x = torch.cat([self.reg.expand(x.shape[0], -1, -1), x], dim=1)
        b, n, _ = x.shape
        q, k, v = (
            self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        )
        y = (
            torch.nn.functional.scaled_dot_product_attention(q, k, v)
            .transpose(1, 2)
            .reshape(b, n, -1)
        )
        return self.out(y[:, 0])


def test_register_tokens_are_not_pruned_as_channels():
    """They were a prunable group of 4: removing two changed every softmax, and prune failed
    verification (relative error 0.12 on DINOv2 with registers)."""
    torch.manual_seed(0)
    model, x = _RegisterTokens().eval(), torch.randn(2, 5, 16)
    assert not [g for g in pk.trace(model, x).groups if g.key.startswith("reg")]
    result = pk.prune(model, x, ratio=0.5)
    assert result.verified and model.reg.shape == (1, 4, 16) and model.qkv.out_features == 24


class _HeadsFromFixedWidth(nn.Module):
    """Attention sizing its output from the input width (`reshape(B, N, C)`, C read from x, as
    timm's EVA-02 and CoaT do) on a width that cannot be pruned (the model input), beside an
    MLP that carries most of the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = 2
        self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)
        self.up, self.down = nn.Linear(16, 128), nn.Linear(128, 16)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = (q @ k.transpose(-2, -1)).softmax(-1) @ v
        y = x + self.proj(y.transpose(1, 2).reshape(b, n, c))
        return y + self.down(torch.relu(self.up(y)))


def test_heads_tied_to_a_fixed_width_stay_whole_in_an_eager_model():
    """The eager model runs only with the heads whole; they hold a small share of what the
    plan removes, so prune keeps them whole and returns the eager model (fine-tunable), with
    a warning, instead of the exported graph."""
    torch.manual_seed(0)
    model, x = _HeadsFromFixedWidth().eval(), torch.randn(2, 5, 16)
    with pytest.warns(UserWarning, match=r"kept whole .*sizes heads from the input width"):
        result = pk.prune(model, x, ratio=0.5)
    assert result.verified and result.model is model and "fallback" not in result.report
    assert model.qkv.out_features == 48 and model.up.out_features == 64
    assert model(torch.randn(3, 7, 16)).shape == (3, 7, 16)
