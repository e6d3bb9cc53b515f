"""Measure models: params, nonzeros, MACs, latency, peak memory, size, energy (DESIGN §5).

>>> import torch, prunekit as pk
>>> pk.profile(torch.nn.Linear(8, 4), torch.randn(2, 8), latency=False).macs
64
"""

from prunekit.metrics.energy import estimate_energy
from prunekit.metrics.environment import environment
from prunekit.metrics.latency import compare_latency, measure_latency
from prunekit.metrics.latency_model import LatencyModel
from prunekit.metrics.perplexity import perplexity
from prunekit.metrics.profile import Profile, profile
from prunekit.metrics.size import serialized_size

__all__ = [
    "profile",
    "Profile",
    "measure_latency",
    "compare_latency",
    "LatencyModel",
    "environment",
    "estimate_energy",
    "serialized_size",
    "perplexity",
]
