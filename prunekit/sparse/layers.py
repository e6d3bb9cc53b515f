"""Inference layers that store a pruned weight as CSR and multiply only its nonzeros.

`SparseLinear` and `SparseConv2d` replace `nn.Linear` / `nn.Conv2d` (normally through
`prunekit.sparse.convert`, which keeps a layer dense unless a measurement shows a speedup).
Kernels:

- ``"native"``: prunekit's C kernel (`prunekit.sparse._native`), float32 on CPU. Linear inputs
  are transposed in blocks of 64 samples so every weight multiplies a contiguous row of inputs;
  a single sample is a gathered matrix-vector product. Convolutions run on im2col columns.
- ``"torch_csr"``: `torch.addmm` with a `torch.sparse_csr` weight (MKL on CPU), float32 and
  float64 (torch has no CPU CSR product for float16 / bfloat16).

The kernel is checked on every call, not only when the layer is built: the native kernel takes raw
pointers, so it runs only on contiguous float32 CPU tensors of the layout it expects. After
``.double()`` / ``.half()`` / ``.to(device)`` (or on an input it cannot take) the layer computes
with torch's CSR product where torch has one for that dtype and device, else densely from the
stored values, in the input's dtype: the result is always the dense layer's.

The modules keep the interface of the layer they replace: `state_dict()` holds the dense-shaped
``weight`` (zeros included) and ``bias``, so a converted model saves and loads like the original,
and `load_state_dict` re-encodes a dense weight. Other persistent buffers of the original
(``weight_mask``...) are kept, and a `prunekit.unstructured` mask stays a live mask (`masks_of`
lists it, `prunekit.save` records it, `to_dense` / `densify` hook it again). They are for
inference: when a gradient is needed (grad mode and an input that requires grad), the forward falls
back to the dense operation on the same weight.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.sparse import _native
from prunekit.unstructured._masks import MASK_SUFFIX, MaskHook, attach_mask

__all__ = ["SparseLinear", "SparseConv2d", "KERNELS"]

KERNELS = ("native", "torch_csr")

# Dtypes torch's CSR x dense product supports, per device type (CPU: MKL, CUDA: cuSPARSE).
_CSR_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64),
}
_F32, _I32, _STRIDED = torch.float32, torch.int32, torch.strided


def _csr_runs(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether torch's CSR product runs for `dtype` on `device`."""
    return dtype in _CSR_DTYPES.get(device.type, ())


def _native_ok(tensor: torch.Tensor, dtype: torch.dtype = _F32) -> bool:
    """Whether the native kernel may take a raw pointer to `tensor`: dense, contiguous, in CPU
    memory and of `dtype` (float32 values, int32 indices)."""
    return (
        tensor.dtype is dtype
        and tensor.is_cpu
        and tensor.layout is _STRIDED
        and tensor.is_contiguous()
    )


def _check_kernel(kernel: str, dtype: torch.dtype, device: torch.device) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"unknown sparse kernel {kernel!r}; choose one of {list(KERNELS)}")
    if kernel == "torch_csr" and not _csr_runs(dtype, device):
        runs = [str(d).removeprefix("torch.") for d in _CSR_DTYPES.get(device.type, ())]
        raise ValueError(
            f"torch's CSR kernel runs {' / '.join(runs) or 'nothing'} on {device.type}, not "
            f"{str(dtype).removeprefix('torch.')}; keep the layer dense"
        )
    if kernel == "native":
        if dtype != torch.float32 or device.type != "cpu":
            raise ValueError(
                f"the native kernel runs float32 on CPU, not {dtype} on {device}; "
                "use kernel='torch_csr' or keep the layer dense"
            )
        if _native.library() is None:
            raise ValueError(
                f"the native kernel is unavailable ({_native.status()}); use kernel='torch_csr'"
            )


class _CarriedMask(MaskHook):
    """The `MaskHook` of a layer converted to CSR. Calling it does nothing: the CSR weight holds
    exactly the nonzeros it was built from and is not trained, so there is nothing to re-zero (and
    rebuilding the dense weight on every call would cost more than the sparse product). It keeps
    the mask a live one: `masks_of` lists it, `prunekit.save` records it (so the dense-shaped
    state dict loads), and `to_dense` / `densify` hook a real `MaskHook` again."""

    def __call__(self, module: nn.Module, args: Any) -> None:
        return None

    def __deepcopy__(self, memo: dict[int, Any]) -> _CarriedMask:
        return _CarriedMask(self.attr)


class _SparseBase(nn.Module):
    """CSR storage of a 2-D view ``[out, fan_in]`` of the weight, and the dense interface."""

    weight_shape: tuple[int, ...]

    def _set_weight(self, weight: torch.Tensor) -> None:
        dense = weight.detach().reshape(weight.shape[0], -1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            csr = dense.to_sparse_csr()
        self.weight_shape = tuple(weight.shape)
        self.register_buffer("crow", csr.crow_indices().to(torch.int32), persistent=False)
        self.register_buffer("col", csr.col_indices().to(torch.int32), persistent=False)
        self.register_buffer("values", csr.values().contiguous(), persistent=False)
        self._csr_cache: torch.Tensor | None = None
        self.__dict__.pop("_offset_cache", None)  # derived from `col`
        self.__dict__.pop("_checked", None)

    def _keep_buffers(self, original: nn.Module) -> None:
        """Carry the original's persistent buffers (e.g. ``weight_mask``) so state_dicts match,
        and its `prunekit.unstructured` masks as live masks (`_CarriedMask`)."""
        for name, buffer in original._buffers.items():
            if buffer is not None and name not in original._non_persistent_buffers_set:
                self.register_buffer(name, buffer.detach().clone())
        for hook in original._forward_pre_hooks.values():
            if isinstance(hook, MaskHook) and hook.mask_name in self._buffers:
                if hook.attr not in self._masked_attrs:
                    self.register_forward_pre_hook(_CarriedMask(hook.attr))

    @property
    def _masked_attrs(self) -> list[str]:
        """Attributes (``"weight"``) whose ``<attr>_mask`` buffer is a live sparsity mask."""
        attrs = []
        for hook in self._forward_pre_hooks.values():
            if isinstance(hook, MaskHook) and hook.mask_name in self._buffers:
                attrs.append(hook.attr)
        return attrs

    def _dense_module(self) -> nn.Module:
        raise NotImplementedError

    def to_dense(self) -> nn.Module:
        """The nn.Linear / nn.Conv2d this layer stands for (a new module, same device and dtype,
        same state dict, train flag and masks: a mask carried from `prunekit.sparsify` is hooked
        again, so fine-tuning keeps the pruned weights at zero)."""
        dense = self._dense_module()
        for name, buffer in self._buffers.items():
            if buffer is not None and name not in self._non_persistent_buffers_set:
                dense.register_buffer(name, buffer.clone())
        dense.load_state_dict(self.state_dict())
        for attr in self._masked_attrs:
            attach_mask(dense, attr, dense._buffers[attr + MASK_SUFFIX])
        return dense.train(self.training)

    def _set_bias(self, bias: torch.Tensor | None) -> None:
        self.register_parameter(
            "bias", None if bias is None else nn.Parameter(bias.detach().clone(), False)
        )

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight (zeros included), rebuilt from CSR: a new tensor, read-only use."""
        values = self.values
        out = values.new_zeros(self.crow.numel() - 1, self._fan_in)
        rows = torch.repeat_interleave(
            torch.arange(out.shape[0], device=out.device),
            self.crow[1:].long() - self.crow[:-1],
            output_size=values.numel(),  # no host sync; also runs on the meta device
        )
        out[rows, self.col.long()] = values
        return out.reshape(self.weight_shape)

    @property
    def _fan_in(self) -> int:
        return int(torch.Size(self.weight_shape[1:]).numel())

    def _path(self, x: torch.Tensor, rows: int, bias: torch.Tensor | None) -> str:
        """Which product runs on `x` (of the stored dtype): ``"native"`` when the layer's kernel
        is native, the kernel is loaded, and the input, the CSR buffers and the bias are what it
        reads through raw pointers (float32 values, int32 row offsets and column indices, all
        dense in CPU memory, of consistent sizes); else ``"torch_csr"`` where torch has a CSR
        product for that dtype and device; else ``"dense"`` (float16 / bfloat16 on CPU...).

        Checking the buffers costs ~2 us, as much as a small layer's product, so the answer is
        kept for these very tensor objects: `_apply` (which may change a parameter in place
        through ``.data``, e.g. `.half()`) and `_set_weight` drop it, and a buffer or bias
        replaced in any other way is a new object, checked afresh."""
        buffers = self._buffers
        values, crow, col = buffers["values"], buffers["crow"], buffers["col"]
        checked = self.__dict__.get("_checked")
        if (
            checked is None
            or checked[0] is not values
            or checked[1] is not crow
            or checked[2] is not col
            or checked[3] is not bias
        ):
            checked = (values, crow, col, bias, *self._check(values, crow, col, bias, rows))
            self.__dict__["_checked"] = checked
        native_ok, csr_ok, on_cpu = checked[4:]
        if x.layout is not _STRIDED:
            return "dense"
        if native_ok and x.is_cpu and self.kernel == "native" and _native.library() is not None:
            return "native"
        if csr_ok and (x.is_cpu if on_cpu else x.device == values.device):
            return "torch_csr"
        return "dense"

    @staticmethod
    def _check(
        values: torch.Tensor,
        crow: torch.Tensor,
        col: torch.Tensor,
        bias: torch.Tensor | None,
        rows: int,
    ) -> tuple[bool, bool, bool]:
        """(native kernel can read these, torch's CSR product runs on them, values on CPU)."""
        native = (
            _native_ok(values)
            and _native_ok(crow, _I32)
            and _native_ok(col, _I32)
            and crow.dim() == 1
            and crow.shape[0] == rows + 1
            and values.dim() == 1
            and col.shape == values.shape
            and (bias is None or (_native_ok(bias) and bias.shape == (rows,)))
        )
        csr = _csr_runs(values.dtype, values.device) and (
            bias is None or (bias.dtype == values.dtype and bias.device == values.device)
        )
        return native, csr, values.is_cpu

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def density(self) -> float:
        return self.nnz / max(1, torch.Size(self.weight_shape).numel())

    def _csr(self) -> torch.Tensor:
        if self._csr_cache is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self._csr_cache = self._make_csr()
        return self._csr_cache

    def _make_csr(self) -> torch.Tensor:
        return torch.sparse_csr_tensor(
            self.crow.long(),
            self.col.long(),
            self.values,
            (self.crow.numel() - 1, self._fan_in),
            check_invariants=False,
        )

    @staticmethod
    def _needs_grad(x: torch.Tensor, bias: torch.Tensor | None) -> bool:
        return torch.is_grad_enabled() and (
            x.requires_grad or (bias is not None and bias.requires_grad)
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_csr_cache"] = None  # sparse tensors cannot be deep-copied or pickled
        state.pop("_offset_cache", None)
        state.pop("_checked", None)
        return state

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        self._csr_cache = None
        self.__dict__.pop("_offset_cache", None)
        self.__dict__.pop("_checked", None)  # e.g. `.half()` turns the bias in place
        return super()._apply(fn, recurse)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = self.weight
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
        elif tuple(state_dict[key].shape) != self.weight_shape:
            error_msgs.append(
                f"size mismatch for {key}: copying a param with shape "
                f"{tuple(state_dict[key].shape)}, the shape in current model is "
                f"{self.weight_shape}."
            )
        else:
            weight = state_dict[key].to(device=self.values.device, dtype=self.values.dtype)
            self._set_weight(weight)
        rest = {k: v for k, v in state_dict.items() if k != key}
        super()._load_from_state_dict(
            rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class SparseLinear(_SparseBase):
    """`nn.Linear` with a CSR weight: ``y = x W^T + b`` computed from the nonzeros of W.

    >>> import torch
    >>> dense = torch.nn.Linear(8, 4)
    >>> with torch.no_grad():
    ...     dense.weight[:, ::2] = 0
    >>> sparse = SparseLinear.from_dense(dense, kernel="torch_csr")
    >>> x = torch.randn(3, 8)
    >>> torch.allclose(sparse(x), dense(x), atol=1e-6)
    True
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        kernel: str = "native",
    ) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(
                f"SparseLinear needs a 2-D weight [out, in], got {tuple(weight.shape)}"
            )
        _check_kernel(kernel, weight.dtype, weight.device)
        self.kernel = kernel
        self.out_features, self.in_features = weight.shape
        self._set_weight(weight)
        self._set_bias(bias)

    @classmethod
    def from_dense(cls, module: nn.Linear, kernel: str = "native") -> SparseLinear:
        """A SparseLinear computing what `module` computes (its persistent buffers kept)."""
        sparse = cls(module.weight, module.bias, kernel)
        sparse._keep_buffers(module)
        return sparse.train(module.training)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, density={self.density:.3f}, kernel={self.kernel}"
        )

    def _dense_module(self) -> nn.Module:
        values = self.values
        return nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=values.device,
            dtype=values.dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Buffers and parameters are read from their dicts: nn.Module.__getattr__ costs ~1 us
        # each, which matters when a whole layer takes 10 us.
        buffers, bias = self._buffers, self._parameters["bias"]
        values = buffers["values"]
        if (
            x.dtype != values.dtype
            or x.dim() == 0
            or x.shape[-1] != self.in_features  # F.linear raises the usual error
            or self._needs_grad(x, bias)
        ):
            return F.linear(x, self.weight.to(x.dtype), bias)
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        path = self._path(x2, self.out_features, bias)
        if path == "native":
            x2 = x2.contiguous()
            n = x2.shape[0]
            y = torch.empty(n, self.out_features, dtype=_F32, device="cpu")
            failed = _native.library().pk_linear(
                n,
                self.in_features,
                self.out_features,
                buffers["crow"].data_ptr(),
                buffers["col"].data_ptr(),
                values.data_ptr(),
                x2.data_ptr(),
                None if bias is None else bias.data_ptr(),
                y.data_ptr(),
                torch.get_num_threads(),
            )
            if failed:
                raise MemoryError("the sparse linear kernel could not allocate its scratch buffer")
        elif path == "torch_csr":
            b = bias if bias is not None else x2.new_zeros(self.out_features)
            y = torch.addmm(b.unsqueeze(1), self._csr(), x2.t()).t()
        else:  # e.g. float16 / bfloat16 on CPU: no sparse kernel, the dense product
            return F.linear(x, self.weight, bias)
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)


class SparseConv2d(_SparseBase):
    """`nn.Conv2d` (groups=1, zero padding) with a CSR weight. The native kernel runs stride-1
    convolutions directly on the (padded) input, without im2col; other strides and the torch
    kernel run on im2col columns (`F.unfold`).

    >>> import torch
    >>> dense = torch.nn.Conv2d(3, 4, 3, padding=1)
    >>> with torch.no_grad():
    ...     dense.weight[:, 1] = 0
    >>> sparse = SparseConv2d.from_dense(dense, kernel="torch_csr")
    >>> x = torch.randn(2, 3, 6, 6)
    >>> torch.allclose(sparse(x), dense(x), atol=1e-5)
    True
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        kernel: str = "native",
    ) -> None:
        super().__init__()
        if weight.dim() != 4:
            raise ValueError(f"SparseConv2d needs a 4-D weight, got {tuple(weight.shape)}")
        if isinstance(padding, str):
            raise ValueError("SparseConv2d needs numeric padding, not a string like 'same'")
        _check_kernel(kernel, weight.dtype, weight.device)
        self.kernel = kernel
        self.out_channels, self.in_channels = weight.shape[:2]
        self.kernel_size = tuple(weight.shape[2:])
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        self._set_weight(weight)
        self._set_bias(bias)

    @staticmethod
    def unsupported(module: nn.Conv2d) -> str | None:
        """Why `module` cannot be converted, or None."""
        if module.groups != 1:
            return "grouped convolution (groups > 1) is not supported"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r} is not supported (only 'zeros')"
        if isinstance(module.padding, str):
            return f"padding={module.padding!r} is not supported (numeric padding only)"
        return None

    @classmethod
    def from_dense(cls, module: nn.Conv2d, kernel: str = "native") -> SparseConv2d:
        """A SparseConv2d computing what `module` computes (its persistent buffers kept)."""
        if (why := cls.unsupported(module)) is not None:
            raise ValueError(f"cannot convert this Conv2d: {why}; keep it dense")
        sparse = cls(
            module.weight,
            module.bias,
            stride=module.stride,  # type: ignore[arg-type]
            padding=module.padding,  # type: ignore[arg-type]
            dilation=module.dilation,  # type: ignore[arg-type]
            kernel=kernel,
        )
        sparse._keep_buffers(module)
        return sparse.train(module.training)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"bias={self.bias is not None}, density={self.density:.3f}, kernel={self.kernel}"
        )

    def _out_size(self, h: int, w: int) -> tuple[int, int]:
        size = []
        for i, n in enumerate((h, w)):
            span = self.dilation[i] * (self.kernel_size[i] - 1) + 1
            size.append((n + 2 * self.padding[i] - span) // self.stride[i] + 1)
        return size[0], size[1]

    def _dense_module(self) -> nn.Module:
        values = self.values
        return nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,  # type: ignore[arg-type]
            stride=self.stride,  # type: ignore[arg-type]
            padding=self.padding,  # type: ignore[arg-type]
            dilation=self.dilation,  # type: ignore[arg-type]
            bias=self.bias is not None,
            device=values.device,
            dtype=values.dtype,
        )

    def _dense(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self._parameters["bias"]
        if (
            x.dtype != self._buffers["values"].dtype
            or x.dim() not in (3, 4)
            or x.shape[-3] != self.in_channels  # F.conv2d raises the usual errors
            or self._needs_grad(x, bias)
        ):
            return self._dense(x, self.weight.to(x.dtype))
        oh, ow = self._out_size(x.shape[-2], x.shape[-1])
        path = self._path(x, self.out_channels, bias)
        if oh < 1 or ow < 1 or path == "dense":
            return self._dense(x, self.weight)  # e.g. float16 / bfloat16 on CPU
        native = path == "native"
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        n = x.shape[0]
        if native and self.stride == (1, 1):
            y = self._direct(x.contiguous(), n, oh, ow)
            return y.squeeze(0) if unbatched else y
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # [N, K, L]
        fan_in, length = cols.shape[1], cols.shape[2]
        if not native:
            flat = cols.transpose(0, 1).reshape(fan_in, n * length)  # [K, N*L]
            y = torch.sparse.mm(self._csr(), flat).reshape(self.out_channels, n, length)
            y = y.transpose(0, 1)
            if bias is not None:
                y = y + bias.view(1, -1, 1)
            y = y.reshape(n, self.out_channels, oh, ow)
        else:
            cols = cols.contiguous()
            y = torch.empty(n, self.out_channels, oh, ow, dtype=_F32, device="cpu")
            _native.library().pk_spmm(
                n,
                self.out_channels,
                length,
                self.crow.data_ptr(),
                self.col.data_ptr(),
                self.values.data_ptr(),
                cols.data_ptr(),
                length,
                fan_in * length,
                None if self.bias is None else self.bias.data_ptr(),
                y.data_ptr(),
                length,
                self.out_channels * length,
                torch.get_num_threads(),
            )
        return y.squeeze(0) if unbatched else y

    def _offsets(self, hp: int, wp: int) -> torch.Tensor:
        """Offset of each nonzero's input element (c, kh, kw) in a padded [C, hp, wp] image."""
        cache = self.__dict__.setdefault("_offset_cache", {})
        col = self.col
        key = (hp, wp, col.data_ptr(), col.numel())  # a replaced `col` is seen too
        if cache.get("key") != key:
            kh, kw = self.kernel_size
            col = col.long()
            c, k = col // (kh * kw), col % (kh * kw)
            offsets = c * hp * wp + (k // kw) * self.dilation[0] * wp + (k % kw) * self.dilation[1]
            cache.update(key=key, offsets=offsets.to(torch.int32))
        return cache["offsets"]

    def _direct(self, x: torch.Tensor, n: int, oh: int, ow: int) -> torch.Tensor:
        """Stride-1 convolution without im2col: output row (n, :, i, :) is the CSR product with
        "rows" of the padded input starting at offsets[k] + i * wp (contiguous for stride 1)."""
        ph, pw = self.padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        c, hp, wp = x.shape[1:]
        offsets = self._offsets(hp, wp)
        y = torch.empty(n, self.out_channels, oh, ow, dtype=_F32, device="cpu")
        size = x.element_size()
        fn = _native.library().pk_spmm
        for i in range(n):
            fn(
                oh,  # batch: output rows
                self.out_channels,
                ow,
                self.crow.data_ptr(),
                offsets.data_ptr(),
                self.values.data_ptr(),
                x.data_ptr() + i * c * hp * wp * size,
                1,  # "row" k of X starts at offsets[k]
                wp,  # next output row: one input row down
                None if self.bias is None else self.bias.data_ptr(),
                y.data_ptr() + i * self.out_channels * oh * ow * size,
                oh * ow,  # output channels
                ow,  # output rows
                torch.get_num_threads(),
            )
        return y
