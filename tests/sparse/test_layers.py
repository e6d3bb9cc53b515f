"""SparseLinear / SparseConv2d compute what the dense layer computes, for every kernel."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunekit.sparse import _native
from prunekit.sparse.layers import KERNELS, SparseConv2d, SparseLinear

AVAILABLE = [k for k in KERNELS if k != "native" or _native.library() is not None]


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).abs().max() / ref.abs().max())


def pruned(module: nn.Module, density: float, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
        module.weight.mul_(torch.rand_like(module.weight) < density)
    return module.eval()


def test_native_kernels_compile_here():
    # The machine this suite runs on has a C compiler; a silent fallback would hide regressions.
    assert _native.library() is not None, _native.status()


@pytest.mark.parametrize("kernel", AVAILABLE)
@pytest.mark.parametrize("batch", [1, 2, 7, 8, 33, 64, 65, 130])
@pytest.mark.parametrize("fan_in", [37, 300])  # rows of ~11 and ~90 nonzeros: every loop tail
def test_linear_matches_dense(kernel, batch, fan_in):
    dense = pruned(nn.Linear(fan_in, 19), density=0.3)
    sparse = SparseLinear.from_dense(dense, kernel).eval()
    x = torch.randn(batch, fan_in)
    with torch.no_grad():
        assert rel_error(sparse(x), dense(x)) < 1e-5


@pytest.mark.parametrize("kernel", AVAILABLE)
def test_linear_shapes_bias_and_extremes(kernel):
    for density in (0.0, 0.05, 1.0):  # empty rows, very sparse, fully dense
        dense = pruned(nn.Linear(20, 9, bias=False), density=density, seed=1)
        sparse = SparseLinear.from_dense(dense, kernel).eval()
        x = torch.randn(2, 3, 20)  # leading dims are kept
        with torch.no_grad():
            y, ref = sparse(x), dense(x)
        assert y.shape == ref.shape == (2, 3, 9)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    assert sparse.bias is None


@pytest.mark.parametrize("kernel", AVAILABLE)
@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": 3, "stride": 2, "padding": 1},
        {"kernel_size": (1, 3), "dilation": 2},
        {"kernel_size": 5},
    ],
)
def test_conv_matches_dense(kernel, kwargs):
    dense = pruned(nn.Conv2d(5, 7, **kwargs), density=0.2)
    sparse = SparseConv2d.from_dense(dense, kernel).eval()
    for x in (torch.randn(3, 5, 11, 13), torch.randn(5, 9, 9)):  # batched and unbatched
        with torch.no_grad():
            y, ref = sparse(x), dense(x)
        assert y.shape == ref.shape
        assert rel_error(y, ref) < 1e-5


def test_unsupported_convolutions_are_refused():
    for conv in (
        nn.Conv2d(4, 4, 3, groups=2),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(4, 4, 3, padding="same"),
    ):
        assert SparseConv2d.unsupported(conv) is not None
        with pytest.raises(ValueError, match="keep it dense"):
            SparseConv2d.from_dense(conv)


def test_unknown_kernel_and_native_dtype_are_refused():
    with pytest.raises(ValueError, match="unknown sparse kernel"):
        SparseLinear(torch.zeros(2, 2), kernel="bsr")
    with pytest.raises(ValueError, match="float32 on CPU"):
        SparseLinear(torch.zeros(2, 2, dtype=torch.float64), kernel="native")
    layer = SparseLinear(torch.eye(3, dtype=torch.float64), kernel="torch_csr")
    x = torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x)


@pytest.mark.parametrize("kernel", AVAILABLE)
def test_state_dict_is_dense_and_round_trips(kernel):
    dense = pruned(nn.Linear(12, 6), density=0.4)
    dense.register_buffer("weight_mask", dense.weight != 0)
    sparse = SparseLinear.from_dense(dense, kernel)
    state = sparse.state_dict()
    assert list(state) == ["weight", "bias", "weight_mask"]
    assert torch.equal(state["weight"], dense.weight.detach())
    assert torch.equal(sparse.weight, dense.weight.detach())
    # loading a different dense weight re-encodes it (new sparsity pattern included)
    other = pruned(nn.Linear(12, 6), density=0.7, seed=3)
    other.register_buffer("weight_mask", other.weight != 0)
    sparse.load_state_dict(other.state_dict())
    x = torch.randn(4, 12)
    with torch.no_grad():
        assert rel_error(sparse(x), other(x)) < 1e-5
    assert sparse.nnz == int((other.weight != 0).sum())
    with pytest.raises(RuntimeError, match="size mismatch"):
        sparse.load_state_dict(nn.Linear(12, 5).state_dict(), strict=False)
    with pytest.raises(RuntimeError, match="Missing key"):
        sparse.load_state_dict({"bias": torch.zeros(6), "weight_mask": other.weight_mask})


@pytest.mark.parametrize("kernel", AVAILABLE)
def test_deepcopy_and_to(kernel):
    dense = pruned(nn.Conv2d(3, 4, 3), density=0.3)
    sparse = SparseConv2d.from_dense(dense, kernel).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        y = sparse(x)  # builds the cached CSR tensor of the torch kernel
        twin = copy.deepcopy(sparse)
        assert twin.values.data_ptr() != sparse.values.data_ptr()
        torch.testing.assert_close(twin(x), y)
        torch.testing.assert_close(sparse.to("cpu")(x), y)


def test_gradients_fall_back_to_the_dense_operation():
    dense = pruned(nn.Linear(6, 3), density=0.5)
    sparse = SparseLinear.from_dense(dense)
    x = torch.randn(4, 6, requires_grad=True)
    sparse(x).sum().backward()
    expected = torch.autograd.grad(dense(x).sum(), x)[0]
    torch.testing.assert_close(x.grad, expected)


@pytest.mark.parametrize("batch", [1, 64])
def test_native_kernel_with_two_threads(batch):
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        dense = pruned(nn.Linear(300, 200), density=0.3)
        sparse = SparseLinear.from_dense(dense, "native").eval()
        conv = pruned(nn.Conv2d(8, 16, 3), density=0.3)
        sparse_conv = SparseConv2d.from_dense(conv, "native").eval()
        x, image = torch.randn(batch, 300), torch.randn(2, 8, 20, 20)
        with torch.no_grad():
            assert rel_error(sparse(x), dense(x)) < 1e-5
            assert rel_error(sparse_conv(image), conv(image)) < 1e-5
    finally:
        torch.set_num_threads(previous)


def test_direct_convolution_follows_a_reloaded_weight_and_input_size():
    conv = pruned(nn.Conv2d(4, 6, 3, padding=1), density=0.3)
    sparse = SparseConv2d.from_dense(conv, "native").eval()
    other = pruned(nn.Conv2d(4, 6, 3, padding=1), density=0.3, seed=5)
    with torch.no_grad():
        for size in (8, 11):  # the offsets depend on the input size
            x = torch.randn(2, 4, size, size)
            assert rel_error(sparse(x), conv(x)) < 1e-5
        sparse.load_state_dict(other.state_dict())
        assert rel_error(sparse(x), other(x)) < 1e-5
