"""Rules for PReLU, GLU, weight normalisation and channel shuffle: the channels they couple, and
pruning through them proven by verification, with both capture paths."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations
from torch.nn.utils import weight_norm as hook_weight_norm

import prunekit as pk

CAPTURES = ["record", "export"]
# torch.nn.utils.weight_norm (hooks) is deprecated but still what HiFi-GAN checkpoints use
pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated:FutureWarning")


class FaceNetBlock(nn.Module):
    """MobileFaceNet style: conv + BN + PReLU, per-channel and shared slopes, depthwise."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.act = nn.PReLU(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.dw_act = nn.PReLU(16)
        self.pw = nn.Conv2d(16, 24, 1)
        self.pw_act = nn.PReLU()  # one slope shared by every channel
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        x = self.dw_act(self.dw(self.act(self.bn(self.conv(x)))))
        return self.head(self.pw_act(self.pw(x)).mean((2, 3)))


class ConformerConv(nn.Module):
    """Conformer convolution module: pointwise conv to 2C, GLU, depthwise conv, residual."""

    def __init__(self, d: int = 8, inner: int = 12) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.pw1 = nn.Conv1d(d, 2 * inner, 1)
        self.dw = nn.Conv1d(inner, inner, 3, padding=1, groups=inner)
        self.bn = nn.BatchNorm1d(inner)
        self.pw2 = nn.Conv1d(inner, d, 1)

    def forward(self, x):  # x: [B, T, d]
        y = self.pw1(self.norm(x).transpose(1, 2))
        y = F.silu(self.bn(self.dw(F.glu(y, dim=1))))
        return x + self.pw2(y).transpose(1, 2)


class GatedLinear(nn.Module):
    """GLU over the last dim (its default), as gated MLPs use it."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(6, 20)
        self.down = nn.Linear(10, 3)

    def forward(self, x):
        return self.down(F.glu(self.up(x)))


class WaveGenerator(nn.Module):
    """HiFi-GAN style: weight-normalised convs, a transposed upsampling conv, a residual block."""

    def __init__(self, weight_norm) -> None:
        super().__init__()
        self.pre = weight_norm(nn.Conv1d(4, 16, 7, padding=3))
        self.up = weight_norm(nn.ConvTranspose1d(16, 8, 4, stride=2, padding=1))
        self.res = weight_norm(nn.Conv1d(8, 8, 3, padding=1))
        self.post = weight_norm(nn.Conv1d(8, 1, 7, padding=3))

    def forward(self, x):
        x = F.leaky_relu(self.up(F.leaky_relu(self.pre(x), 0.1)), 0.1)
        x = x + self.res(F.leaky_relu(x, 0.1))
        return torch.tanh(self.post(x))


class NormedLinear(nn.Module):
    """Weight norm over other dims than 0: a Linear's input dim (1) and the whole tensor (None)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = parametrizations.weight_norm(nn.Linear(6, 10), dim=None)
        self.b = parametrizations.weight_norm(nn.Linear(10, 12), dim=1)
        self.c = nn.Linear(12, 3)

    def forward(self, x):
        return self.c(F.relu(self.b(F.relu(self.a(x)))))


class ShuffleV2(nn.Module):
    """ShuffleNet v2: split, a branch, concat, then shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 1)
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.shuffle = nn.ChannelShuffle(2)
        self.out = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        a, b = self.stem(x).chunk(2, dim=1)
        return self.out(self.shuffle(torch.cat([a, self.branch(b)], 1)))


class ShuffleV1(nn.Module):
    """ShuffleNet v1: grouped 1x1 conv, shuffle, grouped 1x1 conv. With `per_group=3` the shuffle
    (3 x 4 channels after it) cannot line up with 4 groups of 3: nothing through it prunes."""

    def __init__(self, per_group: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 1)
        self.g1 = nn.Conv2d(16, 4 * per_group, 1, groups=4)
        self.shuffle = nn.ChannelShuffle(4)
        self.g2 = nn.Conv2d(4 * per_group, 16, 1, groups=4)
        self.out = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = self.shuffle(F.relu(self.g1(F.relu(self.stem(x)))))
        return self.out(F.relu(self.g2(x)))


def _build(name: str):
    torch.manual_seed(0)
    if name == "prelu":
        return FaceNetBlock(), (torch.randn(2, 3, 8, 8),)
    if name == "glu":
        return ConformerConv(), (torch.randn(2, 5, 8),)
    if name == "glu_last":
        return GatedLinear(), (torch.randn(2, 6),)
    if name == "weight_norm_hook":
        return WaveGenerator(hook_weight_norm), (torch.randn(2, 4, 10),)
    if name == "weight_norm":
        return WaveGenerator(parametrizations.weight_norm), (torch.randn(2, 4, 10),)
    if name == "weight_norm_dims":
        return NormedLinear(), (torch.randn(2, 6),)
    if name == "channel_shuffle":
        return ShuffleV2(), (torch.randn(2, 3, 5, 5),)
    if name == "channel_shuffle_grouped":
        return ShuffleV1(), (torch.randn(2, 3, 5, 5),)
    raise KeyError(name)


OPS = {
    "prelu": "aten.prelu",
    "glu": "aten.glu",
    "glu_last": "aten.glu",
    "weight_norm_hook": "aten._weight_norm",
    "weight_norm": "aten._weight_norm",
    "weight_norm_dims": "aten._weight_norm",
    "channel_shuffle": "aten.channel_shuffle",
    "channel_shuffle_grouped": "aten.channel_shuffle",
}


def _members(graph, name: str) -> set[str]:
    """Members (`fqn:dim`) of the group that holds parameter slice `name`."""
    group = next(g for g in graph.groups if any(f"{m.name}:{m.dim}" == name for m in g.members))
    return {f"{m.name}:{m.dim}" for m in group.members}


@pytest.mark.parametrize("capture", CAPTURES)
@pytest.mark.parametrize("name", list(OPS))
def test_op_is_traced_not_blocked(name, capture):
    model, x = _build(name)
    g = pk.trace(model, x, capture=capture)
    ops = {str(n.target) for n in g.exported.graph.nodes if n.op == "call_function"}
    assert any(op.startswith(OPS[name] + ".") for op in ops)  # the op is really in the graph
    assert not g.blocked_ops
    assert "block" not in g.summary() and OPS[name] not in g.summary()
    assert g.groups


@pytest.mark.parametrize("capture", CAPTURES)
def test_prelu_slopes_follow_their_channels(capture):
    g = pk.trace(*_build("prelu"), capture=capture)
    stem = _members(g, "conv.weight:0")
    assert {"conv.bias:0", "bn.weight:0", "act.weight:0", "dw.weight:0", "dw_act.weight:0"} <= stem
    assert "pw.weight:1" in stem
    # the shared slope has no channel dim: the pointwise group holds no PReLU weight
    assert _members(g, "pw.weight:0") == {"pw.weight:0", "pw.bias:0", "head.weight:1"}


@pytest.mark.parametrize("capture", CAPTURES)
def test_glu_couples_each_output_with_both_halves(capture):
    g = pk.trace(*_build("glu"), capture=capture)
    inner = next(grp for grp in g.groups if any(m.name == "pw1.weight" for m in grp.members))
    assert inner.size == 12  # the GLU output width, not pw1's 24 output channels
    assert {"pw1.weight:0", "pw1.bias:0", "dw.weight:0", "bn.weight:0", "pw2.weight:1"} <= {
        f"{m.name}:{m.dim}" for m in inner.members
    }
    # pw1's output is [a; b]: channel i of the group reaches rows i and i + 12 of pw1
    rows = g.tracer.node_dims[_placeholder(g, "pw1.weight")][0]
    assert g.tracer.atoms.index_map(rows, inner.atom).tolist() == list(range(12)) * 2


def _placeholder(graph, fqn: str):
    return next(n for n, (target, _) in graph.tracer.placeholder_target.items() if target == fqn)


@pytest.mark.parametrize("capture", CAPTURES)
@pytest.mark.parametrize(
    "name, g_name, v_name",
    [
        ("weight_norm_hook", "weight_g", "weight_v"),
        ("weight_norm", *(f"parametrizations.weight.original{i}" for i in (0, 1))),
    ],
)
def test_weight_norm_slices_g_and_v_with_the_channel(name, g_name, v_name, capture):
    g = pk.trace(*_build(name), capture=capture)
    # pre's output channels = up's input channels (dim 0 of a transposed conv's weight, on which
    # up's g lies: weight_norm's dim 0)
    assert _members(g, f"pre.{v_name}:0") == {
        "pre.bias:0",
        f"pre.{g_name}:0",
        f"pre.{v_name}:0",
        f"up.{g_name}:0",
        f"up.{v_name}:0",
    }
    # up's output channels: its v's dim 1 (reduced by up's norm), the residual block, post's input
    res = _members(g, f"up.{v_name}:1")
    assert {"up.bias:0", f"res.{v_name}:0", f"res.{g_name}:0", f"res.{v_name}:1"} <= res
    assert f"post.{v_name}:1" in res


@pytest.mark.parametrize("capture", CAPTURES)
def test_weight_norm_over_other_dims(capture):
    g = pk.trace(*_build("weight_norm_dims"), capture=capture)
    a_g, a_v = "a.parametrizations.weight.original0", "a.parametrizations.weight.original1"
    b_g, b_v = "b.parametrizations.weight.original0", "b.parametrizations.weight.original1"
    # dim=None: one norm over the whole weight, g a scalar that no channel slices
    assert _members(g, f"{a_v}:0") == {f"{a_v}:0", "a.bias:0", f"{b_v}:1", f"{b_g}:1"}
    assert _members(g, f"{b_v}:0") == {f"{b_v}:0", "b.bias:0", "c.weight:1"}
    assert all(m.name != a_g for grp in g.groups for m in grp.members)


@pytest.mark.parametrize("capture", CAPTURES)
def test_channel_shuffle_after_concat_ties_the_halves(capture):
    g = pk.trace(*_build("channel_shuffle"), capture=capture)
    # output channel 2k + h is channel k of half h: both halves lose the same channels
    tied = _members(g, "branch.0.weight:0")
    assert {"stem.weight:0", "branch.0.bias:0", "branch.1.weight:0", "out.weight:1"} <= tied
    assert _members(g, "branch.0.weight:1") == {"stem.weight:0", "stem.bias:0", "branch.0.weight:1"}
    assert sorted(grp.size for grp in g.groups) == [8, 8]


@pytest.mark.parametrize("capture", CAPTURES)
def test_channel_shuffle_between_grouped_convs(capture):
    g = pk.trace(*_build("channel_shuffle_grouped"), capture=capture)
    # g1's channel j of every group is g2's group j after the shuffle (the shuffle's 4 groups
    # are frozen): g2 loses whole groups, so its output channels of that group too
    group_j = next(grp for grp in g.groups if grp.key.startswith("g1.weight:0"))
    assert group_j.size == 4
    assert _members(g, "g1.weight:0") == {
        "g1.weight:0",
        "g1.bias:0",
        "g2.weight:0",
        "g2.bias:0",
        "out.weight:1",
    }
    model, x = _build("channel_shuffle_grouped")
    pk.prune(model, x, ratio=0.5)
    assert (model.g1.groups, model.g1.out_channels, model.g2.groups) == (4, 8, 2)


@pytest.mark.parametrize("capture", CAPTURES)
def test_structures_that_cannot_agree_block_both_sides(capture):
    # 3 x 4 shuffled channels into 4 groups of 3: g2's input spaces must not prune on their own
    torch.manual_seed(0)
    model, x = ShuffleV1(per_group=3), torch.randn(2, 3, 5, 5)
    g = pk.trace(model, x, capture=capture)
    reached = {f"{m.name}:{m.dim}" for grp in g.groups for m in grp.members}
    assert "g2.weight:1" not in reached and "g1.weight:0" not in reached
    result = _prune(model, x, capture)
    assert result.verified and model.g2.in_channels == 12


class _Refold(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(5, 12), nn.Linear(12, 3)

    def forward(self, x):
        y = self.a(x).view(-1, 3, 4).relu()
        return self.b(y.reshape(-1, 4, 3).flatten(1))


@pytest.mark.parametrize("capture", CAPTURES)
def test_reshape_that_cannot_refine_blocks_its_input(capture):
    # [3, 4] read as [4, 3]: no channel of `a` can go without breaking the reshape
    g = pk.trace(_Refold(), torch.randn(2, 5), capture=capture)
    assert not g.groups


def _prune(model, x, capture: str):
    if capture == "record":  # pk.prune's default capture
        return pk.prune(model, x, ratio=0.5)
    graph = pk.trace(model, x, capture="export")
    plan = pk.plan(model, x, ratio=0.5, graph=graph)
    return pk.apply(model, plan, x, verify=True, graph=graph)


@pytest.mark.parametrize("capture", CAPTURES)
@pytest.mark.parametrize("name", list(OPS))
def test_prune_through_op_verifies(name, capture):
    model, x = _build(name)
    shape = model(*x).shape
    params = sum(p.numel() for p in model.parameters())
    result = _prune(model, x, capture)
    assert result.verified is True and result.max_error <= 1e-4
    assert result.model is model and not result.report.get("fallback")
    assert model(*x).shape == shape
    assert sum(p.numel() for p in model.parameters()) < params


def test_pruned_modules_have_consistent_sizes():
    model, x = _build("prelu")
    pk.prune(model, x, ratio=0.5)
    assert model.act.weight.shape == (model.conv.out_channels,) == (8,)
    assert model.pw_act.weight.shape == (1,)
    model, x = _build("weight_norm")
    pk.prune(model, x, ratio=0.5)
    assert model.pre.weight.shape == (model.pre.out_channels, 4, 7) == (8, 4, 7)
    assert model.up.parametrizations.weight.original0.shape == (8, 1, 1)
    model, x = _build("glu")
    pk.prune(model, x, ratio=0.5)
    assert model.pw1.out_channels == 2 * model.dw.in_channels == 12
