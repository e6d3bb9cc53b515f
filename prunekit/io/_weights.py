"""Weights in safetensors: write, inspect the header, load strictly. No pickle anywhere."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model
from torch import nn

# Tag in the safetensors header (the Hugging Face convention); tied names are added next to it.
_HEADER_METADATA = {"format": "pt"}

# Leading bytes of formats people rename by mistake: torch.save zip archives and raw pickles.
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


def write_weights(model: nn.Module, file: Path) -> dict[str, str]:
    """Write the state dict to `file`; returns the tied names dropped, `{alias: kept_name}`.

    `safetensors.torch.save_model` stores each shared tensor once (tied embeddings, shared
    layers) and records every dropped alias in the header metadata, which is read back here.
    """
    names = set(model.state_dict())
    save_model(model, str(file), metadata=dict(_HEADER_METADATA))
    with safe_open(str(file), framework="pt") as f:
        header = f.metadata() or {}
    return {alias: kept for alias, kept in header.items() if alias in names and kept in names}


def sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def sniff(file: Path) -> str | None:
    """Name the format of a file that is clearly not safetensors, else None.

    A safetensors file opens with its header length (u64, little endian) then the JSON header,
    so byte 8 is "{"; pickles open with the PROTO opcode 0x80, torch.save archives with "PK".
    """
    with open(file, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":
        return None
    if head.startswith(_ZIP_MAGIC):
        return "a zip archive (torch.save output, which is pickle-based)"
    if head.startswith(_PICKLE_MAGIC):
        return "a Python pickle"
    return None


def read_header(file: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """`{name: (shape, safetensors dtype)}` from the header, checking the file is complete.

    Raises ValueError for anything that is not a complete safetensors file.
    """
    kind = sniff(file)
    if kind is not None:
        raise ValueError(
            f"{file} is {kind}, not safetensors; prunekit never unpickles weights. "
            "Re-save the model with prunekit.save"
        )
    try:
        with safe_open(str(file), framework="pt") as f:
            return {
                name: (tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype())
                for name in f.keys()
            }
    except Exception as e:  # safetensors raises its own SafetensorError for bad headers
        raise ValueError(
            f"{file} is not a valid safetensors file ({e}); the save is corrupted or incomplete. "
            "Re-save the model with prunekit.save"
        ) from e


def _alias_groups(model: nn.Module) -> list[list[str]]:
    """State-dict names grouped by the memory they share (tied weights form one group)."""
    groups: dict[Any, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.numel() == 0 or tensor.device.type == "meta":
            key: Any = name
        else:
            key = (str(tensor.device), tensor.untyped_storage().data_ptr())
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def check_compatible(model: nn.Module, header: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """Raise ValueError naming missing, unexpected and mis-shaped tensors before any loading."""
    state = model.state_dict(keep_vars=True)
    unexpected = sorted(set(header) - set(state))
    missing = sorted(
        name
        for group in _alias_groups(model)
        if not any(n in header for n in group)
        for name in group
    )
    mismatched = [
        f"{name} (file {list(header[name][0])}, model {list(state[name].shape)})"
        for name in sorted(set(header) & set(state))
        if tuple(header[name][0]) != tuple(state[name].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing from the file: {_listing(missing)}")
    if unexpected:
        problems.append(f"not in the model: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {_listing(mismatched)}")
    if problems:
        raise ValueError(
            "saved weights do not fit the rebuilt model: "
            + "; ".join(problems)
            + ". The model spec, build function or plan does not reproduce the saved architecture"
        )


def match_dtypes(model: nn.Module, dtypes: dict[str, str]) -> None:
    """Give parameters and buffers the dtypes they were saved with (bfloat16 stays bfloat16).

    Parameters are converted through `.data` so that tied parameters stay one object.
    """
    state = model.state_dict(keep_vars=True)
    for name, dtype_name in dtypes.items():
        dtype = getattr(torch, dtype_name, None)
        tensor = state.get(name)
        if not isinstance(dtype, torch.dtype) or tensor is None or tensor.dtype == dtype:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if isinstance(tensor, nn.Parameter):
            tensor.data = tensor.data.to(dtype)
        elif attr in owner._buffers:
            owner._buffers[attr] = tensor.to(dtype)


def load_weights(model: nn.Module, file: Path, device: str | torch.device) -> None:
    """Strict load (tied aliases resolved by safetensors); call `check_compatible` first."""
    try:
        load_model(model, str(file), strict=True, device=str(device))
    except RuntimeError as e:
        raise ValueError(f"could not load {file} into the rebuilt model: {e}") from e
