"""`save` / `load`: a model as a directory of safetensors weights + a JSON description. No pickle.

>>> import torch, tempfile, prunekit as pk
>>> model = torch.nn.Linear(4, 2)
>>> path = pk.save(model, tempfile.mkdtemp() + "/linear", metadata={"note": "demo"})
>>> pk.load(path, build=lambda: torch.nn.Linear(4, 2)).weight.shape
torch.Size([2, 4])
"""

from __future__ import annotations

import datetime
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit._version import __version__
from prunekit.io import _exported, _format, _weights
from prunekit.io._atomic import atomic_directory

__all__ = ["save", "load", "read_metadata"]


def _spec_of(model: nn.Module) -> str | None:
    """The MODEL spec that rebuilds `model`, from prunekit.models (absent: None)."""
    try:
        spec_of = importlib.import_module("prunekit.models").spec_of
    except (ImportError, AttributeError):
        return None
    return spec_of(model)


def _spec_kwargs_of(model: Any) -> dict[str, Any]:
    """Builder keyword arguments recorded with the spec (e.g. ``{"width": 0.5}``)."""
    try:
        kwargs_of = importlib.import_module("prunekit.models").spec_kwargs_of
    except (ImportError, AttributeError):
        return {}
    return dict(kwargs_of(model)) if isinstance(model, nn.Module) else {}


def _absolute_spec(spec: str, base: Path | None = None) -> str | None:
    """`prunekit.models.absolute_spec` (None when prunekit.models is not available)."""
    try:
        absolute_spec = importlib.import_module("prunekit.models._build").absolute_spec
    except (ImportError, AttributeError):
        return None
    return absolute_spec(spec, base)


def saved_spec(document: dict[str, Any], directory: Path) -> str | None:
    """The MODEL spec of a save, with a relative file or directory path found.

    Saves record such paths absolute. A relative one (an older save) is looked up from the
    current directory, then from the save directory and each directory above it (the relative
    path was given from where the save was made, usually one of those); unchanged if not found.
    """
    spec = document.get("spec")
    if not spec:
        return spec
    for base in (None, directory, *Path(os.path.abspath(directory)).parents):
        if (found := _absolute_spec(spec, base)) is not None:
            return found
    return spec


def _plan_to_save(model: nn.Module, plan: Any) -> Any:
    from prunekit.structured.plan import plan_to_save

    return plan_to_save(model, plan)


def _plan_dict(plan: Any) -> dict[str, Any] | None:
    if plan is None:
        return None
    from prunekit.structured.plan import Plan

    if isinstance(plan, Plan):
        return plan.to_dict()
    if isinstance(plan, dict):
        return Plan.from_dict(plan).to_dict()  # validates
    raise TypeError(f"plan must be a prunekit Plan or its dict, got {type(plan).__name__}")


def save(
    model: nn.Module | torch.export.ExportedProgram,
    path: str | os.PathLike[str],
    *,
    plan: Any = None,
    spec: str | None = None,
    metadata: dict[str, Any] | None = None,
    example_inputs: Any = None,
    compress: Any = None,
) -> Path:
    """Save `model` as a directory `path` holding `model.safetensors` and `prunekit.json`.

    `prunekit.json` records the MODEL spec (`spec`, else `prunekit.models.spec_of(model)`) that
    rebuilds the architecture (a file or directory in it made absolute, so that it rebuilds from
    any working directory), the structured-pruning `plan` replayed on it (a model pruned more
    than once in this process, or given no plan, gets every prune's plan composed, as
    `Plan.then` does: the latest `result.plan` alone would not rebuild it), your `metadata`
    (any JSON), tensor shapes/dtypes and `example_inputs` specs, so `load(path)` needs nothing
    else. An `torch.export.ExportedProgram` (or the module of one, with `example_inputs`) is
    saved as `model.pt2` with `torch.export.save` instead.

    `compress` stores the weights compactly (positions of nonzeros + values + entropy coding,
    `prunekit.sparse.storage`): True or "lossless" (exact values), "exact" (byte for byte),
    "fp16", "int8", "kmeans" (Deep Compression weight sharing), a dict of options or a
    `prunekit.sparse.Compression`; `load` decodes it (lossy modes give the quantised weights;
    a weight they cannot represent, such as one holding inf, is stored exactly).

    The write is atomic: everything goes to a temporary sibling directory that is renamed into
    place, replacing an earlier prunekit save at `path` only once complete (files of that save
    which this one does not write, such as reports or exports, are kept). On failure nothing is
    left behind. A non-empty directory that is not a prunekit save is never overwritten.
    Raises `prunekit.io.UnwritableLocationError` (a ValueError and PermissionError) when the
    location cannot be written. Returns the directory path.

    >>> import torch, tempfile, prunekit as pk
    >>> pk.save(torch.nn.Linear(4, 2), tempfile.mkdtemp() + "/m").name
    'm'
    """
    program = _exported.as_exported_program(model, example_inputs)
    if program is None and not isinstance(model, nn.Module):
        raise TypeError(
            f"save expects an nn.Module or torch.export.ExportedProgram, got {type(model).__name__}"
        )
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    if spec is not None and not isinstance(spec, str):
        raise TypeError(f"spec must be a MODEL spec string, got {type(spec).__name__}")
    if program is None and spec is None:
        spec = _spec_of(model)  # type: ignore[arg-type]
    if spec is not None:
        spec = _absolute_spec(spec) or spec  # a relative path rebuilds from this directory only
    compression = _compression(compress, program)

    if example_inputs is None and program is not None and program.example_inputs:
        example_inputs = program.example_inputs[0]  # (args, kwargs) recorded by torch.export
    state = program.state_dict if program is not None else model.state_dict()  # type: ignore[union-attr]
    kind = _format.KIND_EXPORTED if program is not None else _format.KIND_MODULE
    document: dict[str, Any] = {
        "format": _format.FORMAT_NAME,
        "format_version": _format.FORMAT_VERSION,
        "kind": kind,
        "prunekit_version": __version__,
        "torch_version": torch.__version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "spec": spec,
        "spec_kwargs": _spec_kwargs_of(model) if spec is not None else {},
        "plan": _plan_dict(plan if program is not None else _plan_to_save(model, plan)),
        "metadata": metadata or {},
        "training": bool(getattr(model, "training", False)) if program is None else False,
        "modes": _modes_of(model) if program is None else {},
        "call_settings": _exported.call_settings(model) if program is not None else {},
        "example_inputs": None
        if example_inputs is None
        else _format.describe_inputs(example_inputs),
        "tensors": _format.describe_state(state),
        "tied": {},
        "masks": _masked_names(model) if program is None else [],
        "files": {},
    }
    _format.to_json(document)  # fail on bad metadata before touching the disk

    target = Path(path)
    with atomic_directory(target, replaceable=_format.is_save, replaced=_format.OWNED_FILES) as tmp:
        data_file = tmp / _format.KINDS[kind]
        if program is not None:
            _exported.write(program, data_file)
        elif compression is not None:
            document["compression"] = _storage().write_compressed(state, data_file, compression)
        else:
            document["tied"] = _weights.write_weights(model, data_file)  # type: ignore[arg-type]
        document["files"] = {
            data_file.name: {
                "bytes": data_file.stat().st_size,
                "sha256": _weights.sha256(data_file),
            }
        }
        (tmp / _format.META_FILE).write_text(_format.to_json(document), encoding="utf-8")
    return target


def _directory(path: str | os.PathLike[str]) -> Path:
    directory = Path(path)
    if directory.is_file() and directory.name in _format.OWNED_FILES:
        directory = directory.parent  # a file inside a save: use the save
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a prunekit save directory (it does not exist)")
    return directory


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated `prunekit.json` document of a save: format, versions, `spec`, `plan`,
    `metadata` (yours), `tensors`, `tied`, `example_inputs`, `files`. Reads no weights."""
    return _format.read(_directory(path))


def _verified_file(directory: Path, document: dict[str, Any]) -> Path:
    """The data file of the save, checked against the size and hash recorded at save time."""
    file = directory / _format.KINDS[document["kind"]]
    if not file.is_file():
        raise ValueError(f"{directory} is an incomplete prunekit save: {file.name} is missing")
    if document["kind"] == _format.KIND_MODULE and (what := _weights.sniff(file)) is not None:
        raise ValueError(
            f"{file} is {what}, not safetensors; prunekit never unpickles weights. "
            "Re-save the model with prunekit.save"
        )
    recorded = (document.get("files") or {}).get(file.name)
    if recorded:
        size = file.stat().st_size
        if size != recorded.get("bytes"):
            raise ValueError(
                f"{file} has {size} bytes but {recorded.get('bytes')} were saved: the file is "
                "truncated or was replaced. Re-save the model with prunekit.save"
            )
        if recorded.get("sha256") and _weights.sha256(file) != recorded["sha256"]:
            raise ValueError(
                f"{file} does not match the checksum in {_format.META_FILE}: the file is "
                "corrupted or was replaced. Re-save the model with prunekit.save"
            )
    return file


def _build(
    document: dict[str, Any], build: Callable[[], nn.Module] | None, directory: Path
) -> nn.Module:
    if build is not None:
        model = build()
    else:
        spec = saved_spec(document, directory)
        if not spec:
            raise ValueError(
                "this save records no MODEL spec, so prunekit cannot rebuild the architecture: "
                "pass build=, a function returning a fresh instance of the model, e.g. "
                "prunekit.load(path, build=lambda: MyNet())"
            )
        try:
            build_model = importlib.import_module("prunekit.models").build_model
        except (ImportError, AttributeError) as e:
            raise ValueError(
                f"cannot rebuild MODEL spec {spec!r}: prunekit.models.build_model is not "
                "available; pass build= instead"
            ) from e
        model = build_model(spec, **dict(document.get("spec_kwargs") or {}))
    if not isinstance(model, nn.Module):
        raise TypeError(f"build must return an nn.Module, got {type(model).__name__}")
    return model


def _masked_names(model: Any) -> list[str]:
    """Names of the weights carrying a sparsity mask (prunekit.unstructured), in save order."""
    if not isinstance(model, nn.Module):
        return []
    from prunekit.unstructured import masks_of

    return list(masks_of(model))


def _modes_of(model: nn.Module) -> dict[str, bool]:
    """`{name: training}` of the submodules whose mode differs from the root's (a frozen
    BatchNorm, dropout off in one branch): the root's `training` alone would put all alike."""
    return {n: m.training for n, m in model.named_modules() if m.training != model.training}


def _restore_modes(model: nn.Module, root: bool, modes: dict[str, bool]) -> None:
    """Each module in its saved mode: `root` unless `modes` (absent in older saves) says
    otherwise. Parents come first, so a later `train()` call corrects what a parent's set; a
    module's own `train()` runs, in case it overrides it to freeze something."""
    model.train(root)
    for name, module in model.named_modules():
        if module.training != modes.get(name, root):
            module.train(modes.get(name, root))


def _restore_masks(model: nn.Module, names: Any) -> None:
    """Re-attach the masks before the strict load, which then fills them with the saved ones."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("'masks' in prunekit.json must be a list of weight names; corrupted save")
    from prunekit.unstructured import restore_masks

    restore_masks(model, names)


def _storage() -> Any:
    return importlib.import_module("prunekit.sparse.storage")


def _compression(compress: Any, program: Any) -> Any:
    """The resolved compression options of `save(compress=...)`, None for a plain save."""
    if compress is None or compress is False:
        return None
    if program is not None:
        raise ValueError("compress= applies to nn.Module saves, not exported programs")
    return _storage().Compression.resolve(compress)


def _replay(model: nn.Module, plan: dict[str, Any]) -> None:
    from prunekit.structured.plan import Plan

    structured = importlib.import_module("prunekit.structured")
    apply = getattr(structured, "apply", None)
    if apply is None:
        raise ValueError(
            "this save holds a structured-pruning plan but prunekit.structured.apply is not "
            "available to replay it"
        )
    apply(model, Plan.from_dict(plan))


def load(
    path: str | os.PathLike[str],
    *,
    build: Callable[[], nn.Module] | None = None,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Rebuild a saved model: architecture from the stored MODEL spec (or `build()`), the stored
    plan replayed with `prunekit.structured.apply`, then the weights loaded strictly.

    Every check runs before the model is returned: missing, unexpected or mis-shaped tensors,
    truncated or substituted files, pickles, bad JSON and newer format versions raise ValueError
    with the reason. Tensors keep their saved dtypes; the model is on `map_location` and each of
    its modules in the train/eval mode it was saved in. Exported-program saves return `ExportedProgram.module()`.

    >>> import torch, tempfile, prunekit as pk
    >>> path = pk.save(torch.nn.Linear(4, 2), tempfile.mkdtemp() + "/m")
    >>> type(pk.load(path, build=lambda: torch.nn.Linear(4, 2))).__name__
    'Linear'
    """
    directory = _directory(path)
    document = _format.read(directory)
    file = _verified_file(directory, document)
    if document["kind"] == _format.KIND_EXPORTED:
        return _exported.read(file, map_location, document.get("call_settings"))

    compressed = bool(document.get("compression"))
    if compressed:
        header, decoded = _storage().read_compressed(file)
    else:
        header = _weights.read_header(file)
    model = _build(document, build, directory)
    if document.get("plan"):
        _replay(model, document["plan"])
    if document.get("masks"):
        _restore_masks(model, document["masks"])
    model.to(map_location)
    dtypes = {name: info.get("dtype") for name, info in (document.get("tensors") or {}).items()}
    _weights.match_dtypes(model, dtypes)
    _weights.check_compatible(model, header)
    if compressed:
        _storage().load_decoded(model, decoded, map_location)
    else:
        _weights.load_weights(model, file, map_location)
    _restore_modes(model, bool(document.get("training", False)), document.get("modes") or {})
    return model
