"""Sparse execution and compressed storage of pruned ("dense weights with zeros") models.

>>> import torch, prunekit as pk
>>> model = pk.models.lenet300().eval()
>>> pk.sparsify(model, sparsity=0.9)  # doctest: +SKIP
>>> report = pk.sparse.convert(model, torch.randn(64, 1, 28, 28))  # doctest: +SKIP
>>> print(report.summary())  # doctest: +SKIP
"""

from prunekit.sparse.convert import ConvertReport, LayerChoice, convert, densify
from prunekit.sparse.layers import KERNELS, SparseConv2d, SparseLinear
from prunekit.sparse.storage import PRESETS, Compression, decode_state, encode_state

__all__ = [
    "KERNELS",
    "PRESETS",
    "Compression",
    "ConvertReport",
    "LayerChoice",
    "SparseConv2d",
    "SparseLinear",
    "convert",
    "decode_state",
    "densify",
    "encode_state",
]
