"""prunekit: prune PyTorch models, recover accuracy, and prove the gains.

>>> import prunekit as pk
>>> result = pk.prune(model, example_inputs, ratio=0.5)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

from prunekit._version import __version__

# Public name -> module that defines it. Imported lazily so that `prunekit --help` and the light
# parts of the package do not pay for importing everything.
_EXPORTS: dict[str, str] = {
    "trace": "prunekit.graph",
    "DependencyGraph": "prunekit.graph",
    "prune": "prunekit.structured",
    "plan": "prunekit.structured",
    "apply": "prunekit.structured",
    "Plan": "prunekit.structured",
    "PruneResult": "prunekit.structured",
    "recalibrate_bn": "prunekit.structured.recovery",
    "reconstruct": "prunekit.structured.reconstruct",
    "sensitivity": "prunekit.structured.sensitivity",
    "compare": "prunekit.structured.compare",
    "profile": "prunekit.metrics",
    "Profile": "prunekit.metrics",
    "save": "prunekit.io",
    "load": "prunekit.io",
    "export": "prunekit.io",
    "build_model": "prunekit.models",
    "sparsify": "prunekit.unstructured",
    "prune_layerwise": "prunekit.unstructured",
}
_SUBMODULES = (
    "importance",
    "data",
    "models",
    "train",
    "metrics",
    "io",
    "graph",
    "structured",
    "unstructured",
    "sparse",
)

__all__ = ["__version__", *_EXPORTS, *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"prunekit.{name}")
    else:
        raise AttributeError(f"module 'prunekit' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
