"""The ONNX format: written by `torch.onnx` (dynamo exporter first), run with ONNX Runtime.

- "dynamo": `torch.export` with a dynamic batch (prunekit.graph.capture.export), then
  `torch.onnx.export(program, dynamo=True)`; weights inside the file unless it passes 2 GB.
- "torchscript": the older TorchScript-based exporter (`dynamo=False`), batch marked dynamic with
  `dynamic_axes`, for models the dynamo path cannot take.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit._copy import deep_copy
from prunekit.io._export_inputs import batch_size, tensors_of
from prunekit.io._program import capture, has_dynamic_batch

EXPORTERS = ("dynamo", "torchscript")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Exporters print progress and warnings; prunekit reports the outcome itself."""
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        yield


def _write_dynamo(model: nn.Module, args: tuple, kwargs: dict, file: Path) -> bool:
    program, wide_args, wide_kwargs = capture(model, args, kwargs)
    with _quiet():
        onnx_program = torch.onnx.export(
            program, wide_args, kwargs=wide_kwargs or None, dynamo=True, verbose=False
        )
        onnx_program.save(str(file))  # external data only past the 2 GB protobuf limit
    return has_dynamic_batch(program)


def _write_torchscript(model: nn.Module, args: tuple, kwargs: dict, file: Path) -> bool:
    twin = deep_copy(model)
    with contextlib.suppress(NotImplementedError):
        twin.eval()
    batch = batch_size(args, kwargs)
    inputs = tensors_of((args, kwargs))
    with torch.no_grad():
        outputs = tensors_of(twin(*args, **kwargs))
    input_names = [f"input_{i}" for i in range(len(inputs))]
    output_names = [f"output_{i}" for i in range(len(outputs))]
    dynamic: dict[str, dict[int, str]] = {}
    if batch is not None:
        for name, t in [*zip(input_names, inputs), *zip(output_names, outputs)]:
            if t.dim() and t.shape[0] == batch:
                dynamic[name] = {0: "batch"}
    with _quiet():
        torch.onnx.export(
            twin,
            args,
            str(file),
            kwargs=kwargs or None,
            dynamo=False,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic or None,
        )
    return bool(dynamic)


def write(model: nn.Module, args: tuple, kwargs: dict, file: Path, exporter: str) -> bool:
    """Write `model` as ONNX to `file`; returns whether the batch dimension is dynamic."""
    if exporter == "dynamo":
        return _write_dynamo(model, args, kwargs, file)
    return _write_torchscript(model, args, kwargs, file)


def session(file: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session; `threads=n` pins one intra-op pool of n threads, sequential."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])


def load(file: Path, threads: int | None = None) -> Any:
    """A runner `(args, kwargs) -> [tensors]` feeding the input tensors in order to ORT."""
    sess = session(file, threads)
    names = [i.name for i in sess.get_inputs()]

    def run(args: tuple, kwargs: dict) -> list[torch.Tensor]:
        tensors = tensors_of((args, kwargs))
        if len(tensors) != len(names):
            raise ValueError(
                f"the ONNX model takes {len(names)} input tensor(s) ({', '.join(names)}) but "
                f"{len(tensors)} were given"
            )
        feed = {n: t.detach().cpu().numpy() for n, t in zip(names, tensors, strict=True)}
        return [torch.from_numpy(np.array(o)) for o in sess.run(None, feed)]

    return run


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation (int8 weights, activations quantised at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs a pre-processing hint on every call
    try:
        with _quiet():
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
