"""The TorchScript format: `torch.jit.script` where the model scripts, else `torch.jit.trace`."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit._copy import deep_copy
from prunekit.io._export_inputs import tensors_of

EXPORTERS = ("script", "trace")
_EXTRA = "prunekit.json"  # stored in the archive's extra/ folder


def _eval_copy(model: nn.Module) -> nn.Module:
    twin = deep_copy(model)
    try:
        twin.eval()
    except NotImplementedError:  # the exported-graph fallback is in eval mode already
        pass
    return twin


class _KeywordsAsPositional(nn.Module):
    """Calls `inner(*args, **keywords)` from positional inputs only, for `torch.jit.trace`.

    Tracing records positional tensor inputs: keyword tensors become extra positional inputs (in
    the order of `names`) and keyword constants (e.g. `use_cache=False`) are baked in.
    """

    def __init__(self, inner: nn.Module, n_args: int, names: list[str], constants: dict) -> None:
        super().__init__()
        self.inner = inner
        self.n_args = n_args
        self.names = names
        self.constants = constants

    def forward(self, *inputs: Any) -> Any:
        keywords = dict(zip(self.names, inputs[self.n_args :], strict=True))
        return self.inner(*inputs[: self.n_args], **keywords, **self.constants)


def _trace(model: nn.Module, args: tuple, kwargs: dict) -> tuple[Any, list[str] | None]:
    if not kwargs:
        return torch.jit.trace(model, args, check_trace=False, strict=False), None
    names = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    constants = {k: v for k, v in kwargs.items() if k not in names}
    wrapper = _KeywordsAsPositional(model, len(args), names, constants)
    inputs = (*args, *(kwargs[k] for k in names))
    # check_trace off: prunekit checks the saved file itself, at two batch sizes
    return torch.jit.trace(wrapper, inputs, check_trace=False, strict=False), names


def write(
    model: nn.Module, args: tuple, kwargs: dict, file: Path, exporter: str, freeze: bool = False
) -> bool:
    """Script (keeps control flow) or trace (records one path) a copy of `model` to `file`.

    A traced model called with keyword inputs takes the keyword tensors positionally after the
    positional inputs (recorded in the file's `extra/prunekit.json`); keyword constants are
    baked in. `freeze` writes the module frozen for inference (`torch.jit.freeze`: weights
    inlined as constants, BatchNorm folded into the convolution before it), recorded in the extra
    file so that `load` also applies `torch.jit.optimize_for_inference`. Returns True:
    TorchScript takes any batch unless it was traced through code that reads the batch size as a
    Python number, which the check at another batch size reveals.
    """
    twin = _eval_copy(model)
    extra: dict[str, Any] = {"exporter": exporter, "frozen": freeze}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings and deprecation notices
        if exporter == "script":
            scripted = torch.jit.script(twin)
        else:
            with torch.no_grad():
                scripted, names = _trace(twin, args, kwargs)
            extra["keywords_as_positional"] = names
        if freeze:
            scripted = _frozen(scripted)
        torch.jit.save(scripted, str(file), _extra_files={_EXTRA: json.dumps(extra)})
    return True


def _frozen(scripted: Any) -> Any:
    try:
        return torch.jit.freeze(scripted.eval())
    except Exception as e:  # noqa: BLE001 - reported as this exporter's failure
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise RuntimeError(f"torch.jit.freeze failed ({type(e).__name__}: {first})") from e


def _optimized(module: Any) -> Any:
    """`torch.jit.optimize_for_inference` of a loaded frozen module: convolutions kept in
    oneDNN's layout between layers, ReLU fused. Its packed constants cannot be saved, so it is
    applied after loading, as a deployment would; where it fails the frozen module runs as is."""
    try:
        return torch.jit.optimize_for_inference(module)
    except Exception:  # noqa: BLE001 - an optimisation, not a requirement
        return module


def load(file: Path, threads: int | None = None) -> Any:
    """A runner `(args, kwargs) -> [tensors]` for the file, loaded with `torch.jit.load`."""
    extra = {_EXTRA: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(file), map_location="cpu", _extra_files=extra)
        module.eval()
        recorded = json.loads(extra[_EXTRA] or "{}")
        if recorded.get("frozen"):
            module = _optimized(module)
    names = recorded.get("keywords_as_positional")

    def run(args: tuple, kwargs: dict) -> list[torch.Tensor]:
        with torch.inference_mode():
            if names is not None:  # traced with keyword inputs: tensors positionally, in order
                return tensors_of(module(*args, *(kwargs[n] for n in names)))
            return tensors_of(module(*args, **kwargs))

    return run
