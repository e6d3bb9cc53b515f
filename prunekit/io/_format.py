"""The saved-model directory format: file names, the prunekit.json document, its validation.

out/model/
  prunekit.json        format, versions, MODEL spec, plan, metadata, tensor shapes/dtypes,
                       tied names, example input specs, size and sha256 of the weights file,
                       train/eval mode of the root and of submodules that differ from it
  model.safetensors    the state dict (kind "module")
  model.pt2            torch.export archive (kind "exported-program", the exported-graph fallback)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from prunekit.graph.graph import input_specs

FORMAT_NAME = "prunekit-model"
FORMAT_VERSION = 1
META_FILE = "prunekit.json"
WEIGHTS_FILE = "model.safetensors"
EXPORTED_FILE = "model.pt2"
KIND_MODULE = "module"
KIND_EXPORTED = "exported-program"
KINDS = {KIND_MODULE: WEIGHTS_FILE, KIND_EXPORTED: EXPORTED_FILE}
OWNED_FILES = {META_FILE, WEIGHTS_FILE, EXPORTED_FILE}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def describe_inputs(example_inputs: Any) -> list[dict[str, Any]]:
    """JSON description of example inputs (`prunekit.graph.graph.input_specs`): shape and dtype
    of tensors, value of plain scalars, the leaves and structure of containers."""
    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    return input_specs(tuple(example_inputs))


def recorded_input_specs(document: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The example inputs a save records, as `describe_inputs` specs; None when it records none.

    The one place that finds them, whatever wrote the save: its own `example_inputs`, else the
    inputs its plan was made with (a save given a plan but no example inputs), else an input
    shape or inputs in its `metadata` (`input_shape`, `example_input_shape`, `example_inputs`).
    """
    for key in ("input_shape", "example_input_shape"):
        shape = document.get(key)
        if isinstance(shape, list | tuple) and shape and all(_is_size(d) for d in shape):
            return [{"shape": [int(d) for d in shape], "dtype": "float32"}]
    for key in ("example_inputs", "inputs"):
        specs = document.get(key)
        if isinstance(specs, list) and specs and all(_is_input_spec(s) for s in specs):
            return specs
    plan = document.get("plan")
    if isinstance(plan, dict) and (found := recorded_input_specs({"inputs": plan.get("inputs")})):
        return found
    nested = document.get("metadata")
    if isinstance(nested, dict):
        return recorded_input_specs(nested)
    return None


def first_input_shape(specs: list[dict[str, Any]] | None) -> tuple[int, ...] | None:
    """The shape of the first tensor in input specs (of a container's first tensor leaf)."""
    for spec in specs or []:
        if "shape" in spec:
            return tuple(int(d) for d in spec["shape"])
        if (shape := first_input_shape(spec.get("leaves"))) is not None:
            return shape
    return None


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_input_spec(spec: Any) -> bool:
    """A spec as `describe_inputs` writes it: a tensor's shape, a value, or a container's leaves."""
    if not isinstance(spec, dict):
        return False
    if "shape" in spec:
        shape = spec["shape"]
        return isinstance(shape, list) and all(_is_size(d) for d in shape)
    if "leaves" in spec:
        leaves = spec["leaves"]
        return isinstance(leaves, list) and all(_is_input_spec(s) for s in leaves)
    return "value" in spec


def describe_state(state: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    return {
        name: {"shape": list(t.shape), "dtype": dtype_name(t.dtype)} for name, t in state.items()
    }


def to_json(document: dict[str, Any]) -> str:
    try:
        return json.dumps(document, indent=1, sort_keys=False)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"metadata must be JSON-serialisable (dicts, lists, str, numbers, bool, None): {e}"
        ) from e


def parse(text: str, where: Path) -> dict[str, Any]:
    """Validate a prunekit.json document; ValueError with the reason and the file otherwise."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not valid JSON ({e}); the save is corrupted") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise ValueError(
            f"{where} is not a prunekit model description (no 'format': '{FORMAT_NAME}')"
        )
    version = doc.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{where} has no valid 'format_version'; the save is corrupted")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{where} uses format version {version}, newer than this prunekit understands "
            f"({FORMAT_VERSION}); upgrade prunekit"
        )
    if doc.get("kind") not in KINDS:
        raise ValueError(
            f"{where} has unknown kind {doc.get('kind')!r}; expected one of {sorted(KINDS)}"
        )
    for key, kind in (
        ("plan", dict),
        ("metadata", dict),
        ("tensors", dict),
        ("files", dict),
        ("modes", dict),
        ("call_settings", dict),
    ):
        if doc.get(key) is not None and not isinstance(doc[key], kind):
            raise ValueError(f"{where}: '{key}' must be a JSON object; the save is corrupted")
    if doc.get("spec") is not None and not isinstance(doc["spec"], str):
        raise ValueError(f"{where}: 'spec' must be a string; the save is corrupted")
    return doc


def read(directory: Path) -> dict[str, Any]:
    file = directory / META_FILE
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ValueError(f"{directory} is not a prunekit save: {META_FILE} is missing") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{file} is not a text file; the save is corrupted") from e
    return parse(text, file)


def is_save(directory: Path) -> bool:
    """True when `directory` holds a prunekit.json of this format (any version): replaceable."""
    try:
        doc = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT_NAME
