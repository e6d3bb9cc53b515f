"""Shared fixtures, including the zoo of small models every criterion and rule is run through.

A test that takes a `zoo_name` argument is run once per zoo model (see pytest_generate_tests);
`zoo_model(zoo_name)` builds it (seeded) with its example input.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn


class SeqCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.features(x)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Sequential(
            nn.Conv2d(16, 12, 3, padding=1),
            nn.BatchNorm2d(12),
            nn.ReLU(),
            nn.Conv2d(12, 16, 3, padding=1),
            nn.BatchNorm2d(16),
        )
        self.b = nn.Sequential(nn.Conv2d(16, 12, 1), nn.ReLU(), nn.Conv2d(12, 16, 1))
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.a(x))
        x = x + self.b(x)
        return self.head(x.mean((2, 3)))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.b1 = nn.Conv2d(3, 6, 1)
        self.b2 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.mix = nn.Conv2d(14, 10, 1)
        self.bn = nn.BatchNorm2d(14)
        self.fc = nn.Linear(10, 4)

    def forward(self, x):
        y = torch.cat([self.b1(x), self.b2(x)], dim=1)
        a, b = torch.split(self.bn(y), [self.b1.out_channels, self.b2[0].out_channels], dim=1)
        y = torch.cat([b, a], 1)
        return self.fc(self.mix(y).amax((2, 3)))


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Conv2d(3, 16, 1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.bn = nn.BatchNorm2d(16)
        self.gn = nn.GroupNorm(4, 16)
        self.out = nn.Conv2d(16, 6, 1)

    def forward(self, x):
        x = F.relu(self.inp(x))
        x = F.relu(self.bn(self.grouped(x)))
        x = self.gn(self.dw(x))
        return self.out(x).flatten(1)


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc1 = nn.Conv2d(16, 8, 1)
        self.fc2 = nn.Conv2d(8, 16, 1)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = F.hardswish(self.conv(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.head((x * s).mean((2, 3)))


class LayerScale(nn.Module):
    """Bare parameters in the forward pass: a per-channel scale and an einsum weight."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(12, 24)
        self.gamma = nn.Parameter(torch.ones(24))
        self.mix = nn.Parameter(torch.randn(24, 16))
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        h = F.gelu(self.proj(x)) * self.gamma
        return self.out(torch.einsum("bc,cd->bd", h, self.mix))


class Attention(nn.Module):
    """Hand-written multi-head attention over a projected hidden size (prunable)."""

    def __init__(self, dim: int = 24, hidden: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.inp = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 48), nn.GELU(), nn.Linear(48, hidden))
        self.head = nn.Linear(hidden, 5)

    def forward(self, x):
        x = self.inp(x)
        b, t, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))
        x = x + self.mlp(x)
        return self.head(x.mean(1))


class TiedLM(nn.Module):
    """Embedding tied to the output layer: vocabulary never pruned, hidden size is."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.fc = nn.Linear(16, 16)
        self.lm_head = nn.Linear(16, 20, bias=False)
        self.lm_head.weight = self.emb.weight
        self.mid = nn.Linear(16, 24)
        self.back = nn.Linear(24, 16)

    def forward(self, ids):
        h = self.emb(ids)
        h = h + self.back(F.relu(self.mid(h)))
        return self.lm_head(h)


class Shuffle(nn.Module):
    """ShuffleNet-style split, concat and channel shuffle; pixel shuffle upsampling."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 1)
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.up = nn.Conv2d(16, 32, 1)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, self.branch(b)], 1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        x = F.pixel_shuffle(self.up(x), 2)
        return self.out(x).mean((2, 3))


class Recurrent(nn.Module):
    """An op without a rule (cumsum over channels) must block what it touches."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 16)
        self.c = nn.Linear(16, 3)

    def forward(self, x):
        return self.c(torch.cumsum(self.b(F.relu(self.a(x))), dim=-1))


class Transposed(nn.Module):
    """An encoder-decoder with a transposed convolution, conv1d/conv3d and instance norm."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 12, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(12, 8, 2, stride=2)
        self.norm = nn.InstanceNorm2d(8, affine=True)
        self.seq = nn.Conv1d(8, 10, 3, padding=1)
        self.vol = nn.Conv3d(10, 6, 1)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        x = self.norm(self.up(F.relu(self.down(x))))
        y = F.relu(self.seq(x.flatten(2)))  # [B, 10, H*W]
        y = self.vol(y[..., None, None])  # [B, 6, H*W, 1, 1]
        return self.out(y.mean((2, 3, 4)))


class TorchMHA(nn.Module):
    """nn.MultiheadAttention inside nn.TransformerEncoderLayer, behind an input projection."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(10, 32)
        self.layer = nn.TransformerEncoderLayer(32, 4, 48, dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.layer(self.inp(x)).mean(1))


class WithLSTM(nn.Module):
    """LSTM has no rule: it blocks its spaces, the layers around it still prune."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.lstm = nn.LSTM(16, 12, batch_first=True)
        self.mid = nn.Linear(12, 20)
        self.out = nn.Linear(20, 3)

    def forward(self, x):
        h, _ = self.lstm(F.relu(self.inp(x)))
        return self.out(F.relu(self.mid(h[:, -1])))


class TokenMax(nn.Module):
    """Features max-pooled over the tokens (`x.max(dim=1)`, Hiera's pooling): a reduction
    returning values and indices, both holding the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        values, _ = F.relu(self.inp(x)).max(dim=1)
        return self.out(values)


ZOO = {
    "seq_cnn": (SeqCNN, (2, 3, 8, 8)),
    "residual": (Residual, (2, 3, 8, 8)),
    "concat": (Concat, (2, 3, 8, 8)),
    "grouped": (Grouped, (2, 3, 6, 6)),
    "squeeze_excite": (SqueezeExcite, (2, 3, 8, 8)),
    "layer_scale": (LayerScale, (2, 12)),
    "attention": (Attention, (2, 5, 24)),
    "tied_lm": (TiedLM, None),
    "shuffle": (Shuffle, (2, 3, 4, 4)),
    "recurrent": (Recurrent, (2, 8)),
    "transposed": (Transposed, (2, 3, 8, 8)),
    "torch_mha": (TorchMHA, (2, 5, 10)),
    "lstm": (WithLSTM, (2, 4, 6)),
    "token_max": (TokenMax, (2, 5, 6)),
}


def zoo_model(name: str, seed: int = 0) -> tuple[nn.Module, tuple]:
    """A seeded zoo model in eval mode and its example inputs."""
    cls, shape = ZOO[name]
    torch.manual_seed(seed)
    model = cls().eval()
    if shape is None:
        inputs = (torch.randint(0, 20, (2, 7)),)
    else:
        inputs = (torch.randn(shape),)
    return model, inputs


def pytest_generate_tests(metafunc):
    if "zoo_name" in metafunc.fixturenames:
        metafunc.parametrize("zoo_name", sorted(ZOO))


@pytest.fixture
def zoo():
    """`zoo(name, seed=0) -> (model, example_inputs)`."""
    return zoo_model
