"""Inference layers that store a pruned weight as CSR and multiply only its nonzeros.

`SparseLinear` and `SparseConv2d` replace `nn.Linear` / `nn.Conv2d` (normally through
`prunekit.sparse.convert`, which keeps a layer dense unless a measurement shows a speedup).
Kernels:

- ``"native"``: prunekit's C kernel (`prunekit.sparse._native`), float32 on CPU. Linear inputs
  are transposed in blocks of 64 samples so every weight multiplies a contiguous row of inputs;
  a single sample is a gathered matrix-vector product. Convolutions run on im2col columns.
- ``"torch_csr"``: `torch.addmm` with a `torch.sparse_csr` weight (MKL on CPU), any float dtype.

The modules keep the interface of the layer they replace: `state_dict()` holds the dense-shaped
``weight`` (zeros included) and ``bias``, so a converted model saves and loads like the original,
and `load_state_dict` re-encodes a dense weight. Other persistent buffers of the original
(``weight_mask``...) are kept. They are for inference: when a gradient is needed (grad mode and an
input that requires grad), the forward falls back to the dense operation on the same weight.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.sparse import _native

__all__ = ["SparseLinear", "SparseConv2d", "KERNELS"]

KERNELS = ("native", "torch_csr")


def _check_kernel(kernel: str, dtype: torch.dtype, device: torch.device) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"unknown sparse kernel {kernel!r}; choose one of {list(KERNELS)}")
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

    def _keep_buffers(self, original: nn.Module) -> None:
        """Carry the original's persistent buffers (e.g. ``weight_mask``) so state_dicts match."""
        for name, buffer in original._buffers.items():
            if buffer is not None and name not in original._non_persistent_buffers_set:
                self.register_buffer(name, buffer.detach().clone())

    def _set_bias(self, bias: torch.Tensor | None) -> None:
        self.register_parameter(
            "bias", None if bias is None else nn.Parameter(bias.detach().clone(), False)
        )

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight (zeros included), rebuilt from CSR: a new tensor, read-only use."""
        out = self.values.new_zeros(self.crow.numel() - 1, self._fan_in)
        rows = torch.repeat_interleave(
            torch.arange(out.shape[0], device=out.device), self.crow[1:].long() - self.crow[:-1]
        )
        out[rows, self.col.long()] = self.values
        return out.reshape(self.weight_shape)

    @property
    def _fan_in(self) -> int:
        return int(torch.Size(self.weight_shape[1:]).numel())

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
        return state

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        self._csr_cache = None
        self.__dict__.pop("_offset_cache", None)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Buffers and parameters are read from their dicts: nn.Module.__getattr__ costs ~1 us
        # each, which matters when a whole layer takes 10 us.
        buffers, bias = self._buffers, self._parameters["bias"]
        values = buffers["values"]
        if x.dtype != values.dtype or self._needs_grad(x, bias):
            return F.linear(x, self.weight.to(x.dtype), bias)
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        if self.kernel == "torch_csr":
            b = bias if bias is not None else x2.new_zeros(self.out_features)
            y = torch.addmm(b.unsqueeze(1), self._csr(), x2.t()).t()
        else:
            x2 = x2.contiguous()
            n = x2.shape[0]
            y = torch.empty(n, self.out_features, dtype=x2.dtype)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.values.dtype or self._needs_grad(x, self.bias):
            return F.conv2d(
                x, self.weight.to(x.dtype), self.bias, self.stride, self.padding, self.dilation
            )
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        n = x.shape[0]
        oh, ow = self._out_size(x.shape[2], x.shape[3])
        if self.kernel == "native" and self.stride == (1, 1):
            y = self._direct(x.contiguous(), n, oh, ow)
            return y.squeeze(0) if unbatched else y
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # [N, K, L]
        fan_in, length = cols.shape[1], cols.shape[2]
        if self.kernel == "torch_csr":
            flat = cols.transpose(0, 1).reshape(fan_in, n * length)  # [K, N*L]
            y = torch.sparse.mm(self._csr(), flat).reshape(self.out_channels, n, length)
            y = y.transpose(0, 1)
            if self.bias is not None:
                y = y + self.bias.view(1, -1, 1)
            y = y.reshape(n, self.out_channels, oh, ow)
        else:
            cols = cols.contiguous()
            y = torch.empty(n, self.out_channels, oh, ow, dtype=x.dtype)
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
        if cache.get("key") != (hp, wp):
            kh, kw = self.kernel_size
            col = self.col.long()
            c, k = col // (kh * kw), col % (kh * kw)
            offsets = c * hp * wp + (k // kw) * self.dilation[0] * wp + (k % kw) * self.dilation[1]
            cache.update(key=(hp, wp), offsets=offsets.to(torch.int32))
        return cache["offsets"]

    def _direct(self, x: torch.Tensor, n: int, oh: int, ow: int) -> torch.Tensor:
        """Stride-1 convolution without im2col: output row (n, :, i, :) is the CSR product with
        "rows" of the padded input starting at offsets[k] + i * wp (contiguous for stride 1)."""
        ph, pw = self.padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        c, hp, wp = x.shape[1:]
        offsets = self._offsets(hp, wp)
        y = torch.empty(n, self.out_channels, oh, ow, dtype=x.dtype)
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
