"""Converted layers stay correct after dtype/device moves, convert keeps low-precision layers
dense, masks survive convert -> densify and save/load, and profile counts a converted model
like the model it came from.

The dtype tests assert which product a layer picks *before* running it: if the native kernel were
picked on a float16 input it would write past its buffers and abort the test process, so a
regression fails the assertion instead.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.sparse import SparseConv2d, SparseLinear, _native
from prunekit.sparse.layers import KERNELS
from prunekit.train import fit
from prunekit.unstructured import masks_of, remove_masks

AVAILABLE = [k for k in KERNELS if k != "native" or _native.library() is not None]
LOW = [torch.float16, torch.bfloat16]
TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 5e-2, torch.float64: 1e-6, torch.float32: 1e-5}


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).abs().max() / ref.double().abs().max())


def pruned(module: nn.Module, density: float = 0.2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
        module.weight.mul_(torch.rand_like(module.weight) < density)
    return module.eval()


def cases() -> list[tuple[nn.Module, torch.Tensor]]:
    return [
        (pruned(nn.Linear(40, 12)), torch.randn(5, 40)),
        (pruned(nn.Linear(40, 12, bias=False)), torch.randn(2, 3, 40)),
        (pruned(nn.Conv2d(4, 6, 3, padding=1)), torch.randn(2, 4, 7, 7)),  # direct (stride 1)
        (pruned(nn.Conv2d(4, 6, 3, stride=2)), torch.randn(4, 9, 9)),  # im2col, unbatched
    ]


def sparse_of(dense: nn.Module, kernel: str) -> nn.Module:
    cls = SparseConv2d if isinstance(dense, nn.Conv2d) else SparseLinear
    return cls.from_dense(dense, kernel).eval()


def path_of(layer: nn.Module, x: torch.Tensor) -> str:
    rows = layer.out_channels if isinstance(layer, SparseConv2d) else layer.out_features
    return layer._path(x, rows, layer.bias)


# -- 1. the native kernel runs only on what it can read -----------------------------------------


@pytest.mark.parametrize("kernel", AVAILABLE)
@pytest.mark.parametrize("dtype", [*LOW, torch.float64])
def test_layers_compute_correctly_after_a_dtype_change(kernel, dtype):
    for dense, x in cases():
        sparse = sparse_of(dense, kernel)
        with torch.no_grad():
            ref = copy.deepcopy(dense).to(dtype)(x.to(dtype))
            sparse.to(dtype)
            xd = x.to(dtype)
            expected = "torch_csr" if dtype == torch.float64 else "dense"
            assert path_of(sparse, xd) == expected  # never the float32 native kernel
            y = sparse(xd)
        assert y.dtype == dtype and y.shape == ref.shape
        assert rel_error(y, ref) < TOLERANCE[dtype]
        # and back to float32: the layer's own kernel runs again (on the rounded weights)
        sparse.float()
        with torch.no_grad():
            assert path_of(sparse, x) == kernel
            rounded = copy.deepcopy(dense).to(dtype).float()
            assert rel_error(sparse(x), rounded(x)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_converted_model_half_and_double(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)
    )
    pk.sparsify(model, sparsity=0.8)
    model.eval()
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        ref = model(x)
    report = pk.sparse.convert(model, x, measure=False, kernels=AVAILABLE[:1], max_density=1.0)
    assert report.converted == ["0", "3"]
    model.to(dtype)
    with torch.no_grad():
        assert all(path_of(model[i], x.to(dtype)) != "native" for i in (0, 3))
        y = model(x.to(dtype))
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert rel_error(y, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("kernel", AVAILABLE)
def test_a_mismatched_input_dtype_runs_densely(kernel):
    for dense, x in cases():
        sparse = sparse_of(dense, kernel)
        with torch.no_grad():  # float32 layer, float64 input without bias: the dense product
            if sparse.bias is None:
                y = sparse(x.double())
                assert y.dtype == torch.float64 and rel_error(y, dense(x)) < 1e-5


@pytest.mark.parametrize("kernel", AVAILABLE)
def test_meta_device_moves_never_reach_a_kernel(kernel):
    for dense, x in cases():
        sparse = sparse_of(dense, kernel).to("meta")
        xm = x.to("meta")
        assert path_of(sparse, xm) == "dense"
        with torch.no_grad():
            ref, y = dense.to("meta")(xm), sparse(xm)
        assert y.is_meta and y.shape == ref.shape
        assert sparse.weight.is_meta and tuple(sparse.weight.shape) == sparse.weight_shape


@pytest.mark.parametrize("kernel", AVAILABLE)
def test_wrong_input_shapes_raise_like_the_dense_layer(kernel):
    linear = sparse_of(pruned(nn.Linear(40, 12)), kernel)
    conv = sparse_of(pruned(nn.Conv2d(4, 6, 3)), kernel)
    with torch.no_grad():
        for layer, x in (
            (linear, torch.randn(6, 39)),  # would read past each row of x
            (linear, torch.randn(3, 80)),
            (conv, torch.randn(2, 3, 8, 8)),  # fewer channels than the weight
            (conv, torch.randn(2, 4, 2, 2)),  # smaller than the kernel
            (conv, torch.randn(8, 8)),
        ):
            with pytest.raises(RuntimeError):
                layer(x)


def test_a_replaced_buffer_is_checked_again():
    sparse = sparse_of(pruned(nn.Linear(40, 12)), "native") if "native" in AVAILABLE else None
    if sparse is None:
        pytest.skip("native kernels unavailable")
    x = torch.randn(3, 40)
    assert path_of(sparse, x) == "native"
    sparse.bias = nn.Parameter(sparse.bias.detach().double(), requires_grad=False)
    assert path_of(sparse, x) != "native"  # a float64 bias is not what the kernel reads
    sparse.register_buffer("crow", sparse.crow.long(), persistent=False)
    sparse.bias = nn.Parameter(sparse.bias.detach().float(), requires_grad=False)
    assert path_of(sparse, x) != "native"  # int64 row offsets neither


def test_native_layer_runs_where_the_kernel_is_disabled(monkeypatch):
    if "native" not in AVAILABLE:
        pytest.skip("native kernels unavailable")
    dense, x = cases()[0]
    sparse = sparse_of(dense, "native")
    monkeypatch.setattr(_native, "_state", {"lib": None, "status": "disabled for this test"})
    with torch.no_grad():
        assert path_of(sparse, x) == "torch_csr"
        assert rel_error(sparse(x), dense(x)) < 1e-5


# -- 2. float16 / bfloat16 models stay dense, with the reason ----------------------------------


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)
    )


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("measure", [False, True])
def test_convert_keeps_low_precision_layers_dense(dtype, measure):
    torch.manual_seed(0)
    model = small_net().to(dtype)
    pk.sparsify(model, sparsity=0.9)
    model.eval()
    x = torch.randn(2, 3, 6, 6, dtype=dtype)
    with torch.no_grad():
        ref = model(x)
    report = pk.sparse.convert(model, x, measure=measure)  # no timing: nothing is eligible
    assert report.converted == []
    assert [type(m) for m in model] == [nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear]
    name = str(dtype).removeprefix("torch.")
    assert all(f"dtype {name}" in c.reason for c in report.layers), report.summary()
    assert name in report.summary()
    with torch.no_grad():
        assert torch.equal(model(x), ref)


@pytest.mark.parametrize("dtype", LOW)
def test_torch_csr_layers_refuse_low_precision(dtype):
    with pytest.raises(ValueError, match="keep the layer dense"):
        SparseLinear(torch.eye(4, dtype=dtype), kernel="torch_csr")


def test_convert_float64_uses_torch_csr():
    torch.manual_seed(0)
    model = small_net().double()
    pk.sparsify(model, sparsity=0.9)
    model.eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
    report = pk.sparse.convert(model, x, measure=False, max_density=1.0)
    assert report.converted == ["0", "3"]
    assert {model[0].kernel, model[3].kernel} == {"torch_csr"}
    assert "native" in report.layers[0].reason or report.layers[0].reason.startswith("measure")
    with torch.no_grad():
        assert rel_error(model(x), ref) < 1e-10


# -- 3. masks survive convert, densify, save and load -------------------------------------------


def masked_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = small_net()
    pk.sparsify(model, sparsity=0.9)
    return model.eval()


def same_masks(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kernel", AVAILABLE)
def test_converted_layers_keep_live_masks_and_densify_hooks_them_again(kernel):
    model = masked_net()
    before = {k: v.clone() for k, v in masks_of(model).items()}
    assert list(before) == ["0.weight", "3.weight"]
    x = torch.randn(4, 3, 6, 6)
    pk.sparse.convert(model, x, measure=False, kernels=[kernel], max_density=1.0)
    assert isinstance(model[0], SparseConv2d) and isinstance(model[3], SparseLinear)
    assert same_masks(masks_of(model), before)
    assert same_masks(masks_of(copy.deepcopy(model)), before)

    pk.sparse.densify(model)
    assert type(model[0]) is nn.Conv2d and type(model[3]) is nn.Linear
    assert same_masks(masks_of(model), before)
    # fine-tuning (no KeepMasks callback) keeps every pruned weight at zero
    data = [(torch.randn(8, 3, 6, 6), torch.randint(0, 10, (8,)))] * 3
    fit(model.train(), data, epochs=1, lr=0.5, progress=False)
    for name, mask in before.items():
        weight = model.get_parameter(name)
        assert not weight[~mask].any(), name
        assert weight[mask].ne(0).any()  # and the kept ones did train


@pytest.mark.parametrize("kernel", AVAILABLE)
def test_a_converted_model_saves_and_loads(kernel, tmp_path):
    model = masked_net()
    x = torch.randn(4, 3, 6, 6)
    before = {k: v.clone() for k, v in masks_of(model).items()}
    with torch.no_grad():
        ref = model(x)
    pk.sparse.convert(model, x, measure=False, kernels=[kernel], max_density=1.0)
    for compress in (False, True):
        path = tmp_path / f"m{compress}"
        pk.save(model, path, compress=compress)
        loaded = pk.load(path, build=small_net).eval()
        assert same_masks(masks_of(loaded), before)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), ref)
    # and after densify, the round trip of an unconverted model
    pk.sparse.densify(model)
    pk.save(model, tmp_path / "dense")
    loaded = pk.load(tmp_path / "dense", build=small_net)
    assert same_masks(masks_of(loaded), before)


def test_removed_and_plain_masks_stay_as_they_were():
    model = masked_net()
    x = torch.randn(2, 3, 6, 6)
    pk.sparse.convert(model, x, measure=False, max_density=1.0)
    assert remove_masks(model) == ["0.weight", "3.weight"]
    assert masks_of(model) == {} and "0.weight_mask" not in model.state_dict()
    pk.sparse.densify(model)
    assert masks_of(model) == {}
    # a bool *_mask buffer that is not a sparsify mask is carried as a plain buffer
    plain = small_net().eval()
    with torch.no_grad():
        plain[3].weight.mul_(torch.rand_like(plain[3].weight) < 0.1)
    plain[3].register_buffer("weight_mask", plain[3].weight != 0)
    pk.sparse.convert(plain, x, measure=False, ignore=["0"])
    assert masks_of(plain) == {} and "3.weight_mask" in plain.state_dict()
    pk.sparse.densify(plain)
    assert masks_of(plain) == {} and "3.weight_mask" in plain.state_dict()


# -- 4. profile counts a converted model like its dense original --------------------------------


@pytest.mark.parametrize("kernel", AVAILABLE)
def test_profile_of_a_converted_model_matches_the_original(kernel):
    model = masked_net()
    x = torch.randn(4, 3, 6, 6)
    before = pk.profile(model, x, latency=False, size=False)
    pk.sparse.convert(model, x, measure=False, kernels=[kernel], max_density=1.0)
    after = pk.profile(model, x, latency=False, size=False)
    for field in ("params", "nonzero_params", "macs", "nonzero_macs", "activation_elements"):
        assert getattr(after, field) == getattr(before, field), field
    assert after.energy_mj == pytest.approx(before.energy_mj)
    assert before.nonzero_macs < before.macs  # sparse MACs are counted, not dense ones
    for name in ("0", "3"):
        numbers = {k: v for k, v in after.layers[name].items() if k != "type"}
        assert numbers == {k: v for k, v in before.layers[name].items() if k != "type"}
    assert after.layers["0"]["type"] == "SparseConv2d"
    # the model is left converted, and its memory is what it holds (the CSR, not a dense copy)
    assert isinstance(model[0], SparseConv2d) and isinstance(model[3], SparseLinear)
    assert after.peak_memory_bytes < before.peak_memory_bytes


def test_profile_of_a_lone_sparse_layer():
    dense = pruned(nn.Linear(64, 16), density=0.25)
    x = torch.randn(3, 64)
    before = pk.profile(dense, x, latency=False, size=False, memory=False)
    sparse = SparseLinear.from_dense(dense, "torch_csr")
    after = pk.profile(sparse, x, latency=False, size=False, memory=False)
    assert (after.params, after.nonzero_params) == (before.params, before.nonzero_params)
    nonzero_macs = 3 * int(dense.weight.count_nonzero())
    assert (after.macs, after.nonzero_macs) == (before.macs, before.nonzero_macs)
    assert (after.macs, after.nonzero_macs) == (3 * 64 * 16, nonzero_macs)
