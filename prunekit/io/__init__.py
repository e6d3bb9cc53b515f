"""Persistence without pickle: `save` / `load` a model as safetensors weights + JSON description.

>>> import torch, tempfile, prunekit as pk
>>> path = pk.save(torch.nn.Linear(4, 2), tempfile.mkdtemp() + "/model")
>>> sorted(p.name for p in path.iterdir())
['model.safetensors', 'prunekit.json']
"""

from prunekit.io._atomic import UnwritableLocationError
from prunekit.io._format import FORMAT_VERSION
from prunekit.io.export import ExportResult, ExportVerificationError, export, export_latency
from prunekit.io.saveload import load, read_metadata, save

__all__ = [
    "save",
    "load",
    "read_metadata",
    "export",
    "export_latency",
    "ExportResult",
    "ExportVerificationError",
    "UnwritableLocationError",
    "FORMAT_VERSION",
]
