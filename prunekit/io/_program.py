"""The exported-program format: `torch.export` with a dynamic batch, saved with `torch.export.save`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.io import _exported
from prunekit.io._export_inputs import tensors_of

EXPORTERS = ("torch.export",)


def has_dynamic_batch(program: torch.export.ExportedProgram) -> bool:
    """True when some user input of `program` has a symbolic leading (batch) dimension."""
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor) and value.dim():
            if isinstance(value.shape[0], torch.SymInt):
                return True
    return False


def capture(
    model: nn.Module, args: tuple, kwargs: dict
) -> tuple[torch.export.ExportedProgram, tuple, dict]:
    """`torch.export` of a copy of `model` in eval mode, batch dynamic when the model allows it."""
    from prunekit.graph.capture import export

    return export(model, args, kwargs)


def write(model: nn.Module, args: tuple, kwargs: dict, file: Path, exporter: str) -> bool:
    """Write `model` to `file`; returns whether the batch dimension is dynamic."""
    program, _, _ = capture(model, args, kwargs)
    _exported.write(program, file)
    return has_dynamic_batch(program)


def load(file: Path, threads: int | None = None) -> Any:
    """A runner `(args, kwargs) -> [tensors]` for the archive, loaded with `torch.export.load`."""
    module = _exported.read(file, "cpu")  # refuses archives that would need unpickling

    def run(args: tuple, kwargs: dict) -> list[torch.Tensor]:
        with torch.inference_mode():
            return tensors_of(module(*args, **kwargs))

    return run
