"""The TorchScript format: `torch.jit.script` where the model scripts, else `torch.jit.trace`."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.io._export_inputs import tensors_of

EXPORTERS = ("script", "trace")


def _eval_copy(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model)
    try:
        twin.eval()
    except NotImplementedError:  # the exported-graph fallback is in eval mode already
        pass
    return twin


def write(model: nn.Module, args: tuple, kwargs: dict, file: Path, exporter: str) -> bool:
    """Script (keeps control flow) or trace (records one path) a copy of `model` to `file`.

    Returns True: a TorchScript module takes any batch unless it was traced through code that
    reads the batch size as a Python number, which the check at another batch size reveals.
    """
    twin = _eval_copy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings and deprecation notices
        if exporter == "script":
            scripted = torch.jit.script(twin)
        else:
            with torch.no_grad():
                scripted = torch.jit.trace(
                    twin,
                    args,
                    example_kwarg_inputs=kwargs or None,
                    check_trace=False,  # prunekit checks the saved file at two batch sizes
                    strict=False,
                )
        torch.jit.save(scripted, str(file))
    return True


def load(file: Path, threads: int | None = None) -> Any:
    """A runner `(args, kwargs) -> [tensors]` for the file, loaded with `torch.jit.load`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(file), map_location="cpu")
    module.eval()

    def run(args: tuple, kwargs: dict) -> list[torch.Tensor]:
        with torch.inference_mode():
            return tensors_of(module(*args, **kwargs))

    return run
