"""The exported-graph fallback (`torch.export`), saved with `torch.export.save` (DESIGN §4).

`torch.export.load` unpickles some archive members (tensor-subclass weights, script objects,
legacy weight files, and sample inputs when the safe loader fails). Plain-tensor archives, which
is what prunekit writes, need none of that, so an archive is inspected first and refused if any
member would be unpickled: loading a prunekit save never runs pickle.
"""

from __future__ import annotations

import io
import json
import types
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn


def is_exported_module(model: Any) -> bool:
    """True for the GraphModule returned by `ExportedProgram.module()`."""
    unlift = getattr(getattr(torch, "export", None), "_unlift", None)
    stateful = getattr(unlift, "_StatefulGraphModule", None)
    return stateful is not None and isinstance(model, stateful)


def baked_eval_mode(module: nn.Module) -> nn.Module:
    """`module` (an exported graph, which runs in the eval mode it was exported in) with
    `eval()` and `train(False)` doing nothing, as users and tools call them by reflex, and
    `train()` refusing with the reason (torch's own versions refuse both, without one)."""
    for m in module.modules():
        m.training = False
    module.train = types.MethodType(_refuse_training, module)  # type: ignore[method-assign]
    module.eval = types.MethodType(_already_eval, module)  # type: ignore[method-assign]
    return module


def _refuse_training(self: nn.Module, mode: bool = True) -> nn.Module:
    if mode:
        raise NotImplementedError(
            "this model is an exported graph (torch.export) with eval mode baked in: it cannot "
            "be trained; fine-tune the eager model instead"
        )
    return self


def _already_eval(self: nn.Module) -> nn.Module:
    return self


# torch.export's shape reasoning with every input size symbolic can run for hours (DaViT's
# padded window partitions): past this, the graph keeps the example's sizes
FREE_SIZES_SECONDS = 60
EXPORT_INPUTS = "_prunekit_export_inputs"  # (args, kwargs) a pruned exported graph came from
SETTINGS = (bool, int, float, str, type(None))  # keyword values a save can hold in its JSON


class CallSettings:
    """A forward pre-hook filling in the keyword settings a graph was captured with (such as
    the `use_cache=False` prunekit adds for Hugging Face models) where the caller leaves them
    out: the graph takes them as inputs, but their values are baked in."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = dict(settings)

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**self.settings, **kwargs}


def remember_export_inputs(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Keep on `module` (an exported graph) the inputs it was captured with, so that
    `prunekit.save` can capture it again without example inputs, and let callers leave out
    the keyword settings among them (see `CallSettings`)."""
    _fill_in(module, {k: v for k, v in kwargs.items() if isinstance(v, SETTINGS)})
    object.__setattr__(module, EXPORT_INPUTS, (tuple(args), dict(kwargs)))


def _fill_in(module: nn.Module, settings: dict[str, Any] | None) -> None:
    """Let `module`'s callers leave out `settings` (a `CallSettings` hook, run first)."""
    if settings:
        module.register_forward_pre_hook(CallSettings(settings), with_kwargs=True, prepend=True)


def call_settings(module: Any) -> dict[str, Any]:
    """The keyword settings `module`'s callers may leave out (saved with an exported program,
    put back by `read`)."""
    hooks = getattr(module, "_forward_pre_hooks", {}).values()
    return {k: v for h in hooks if isinstance(h, CallSettings) for k, v in h.settings.items()}


def as_exported_program(model: Any, example_inputs: Any) -> torch.export.ExportedProgram | None:
    """The ExportedProgram to save for `model`, or None when `model` is an ordinary module.

    The module of an ExportedProgram (the exported-graph fallback of `prunekit.prune`) is
    captured again with `torch.export`, from `example_inputs` or the inputs it was made from,
    with every input size free that the graph leaves free (the batch, image sizes, sequence
    lengths), so the loaded program accepts what the saved module accepts."""
    if isinstance(model, torch.export.ExportedProgram):
        return model
    if not is_exported_module(model):
        return None
    if example_inputs is not None:
        args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        kwargs: dict = call_settings(model)
    elif hasattr(model, EXPORT_INPUTS):
        args, kwargs = getattr(model, EXPORT_INPUTS)
    else:
        raise ValueError(
            "this model is the module of an ExportedProgram: save the ExportedProgram itself, "
            "or pass example_inputs= so it can be re-exported"
        )
    return _export_free_sizes(model, args, kwargs)


def _export_free_sizes(model: nn.Module, args: tuple, kwargs: dict) -> torch.export.ExportedProgram:
    """`model` exported with every size free that it leaves free (a batch of 1 is widened to 2
    first, as 1 would specialise), else at the inputs' sizes."""
    from torch.utils._pytree import tree_map

    def wide(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == 1:
            return torch.cat([v, v])
        return v

    with torch.no_grad():
        try:
            return export_free_sizes(model, tree_map(wide, args), tree_map(wide, kwargs))
        except Exception:  # noqa: BLE001 - the fixed sizes always export
            from prunekit.graph.capture import _quiet_export

            with _quiet_export():
                return torch.export.export(model, tuple(args), dict(kwargs), strict=False)


def export_free_sizes(model: nn.Module, args: tuple, kwargs: dict) -> torch.export.ExportedProgram:
    """`model` exported with every input size `Dim.AUTO` (sizes the model fixes specialise),
    quietly and within `FREE_SIZES_SECONDS`; raises what torch.export raises (or
    `prunekit._timeout.TimeLimitExceeded`)."""
    import warnings

    from torch.export import Dim
    from torch.utils._pytree import tree_map

    from prunekit._timeout import time_limit
    from prunekit.graph.capture import _named_specs, _quiet_export

    def spec(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.dim():
            return dict.fromkeys(range(v.dim()), Dim.AUTO)
        return None

    arg_specs = tuple(tree_map(spec, a) for a in args)
    dynamic: Any = arg_specs
    if kwargs:  # by parameter name: the positional ones, then the keywords
        dynamic = {**_named_specs(model, arg_specs), **tree_map(spec, kwargs)}
    with (
        warnings.catch_warnings(),
        _quiet_export(),
        time_limit(FREE_SIZES_SECONDS, "exporting with free sizes"),
    ):
        warnings.simplefilter("ignore")
        return torch.export.export(model, args, kwargs, dynamic_shapes=dynamic, strict=False)


def write(program: torch.export.ExportedProgram, file: Path) -> None:
    torch.export.save(program, str(file))


def _refuse(file: Path, why: str) -> ValueError:
    return ValueError(
        f"{file} {why}; prunekit never unpickles files. Re-save the model with prunekit.save"
    )


def check_pickle_free(file: Path) -> None:
    """Raise ValueError unless `file` is an intact torch.export archive that needs no pickle."""
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(
            f"{file} is not a valid torch.export archive ({e}); the save is corrupted"
        ) from e
    with archive:
        try:
            broken = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            broken = f"? ({e})"
        if broken is not None:
            raise ValueError(f"{file} is damaged (member {broken}); the save is corrupted")
        for name in archive.namelist():
            parts = name.split("/")
            if "data" not in parts:
                continue
            section = parts[parts.index("data") + 1] if parts.index("data") + 1 < len(parts) else ""
            if section in ("weights", "constants"):
                if name.endswith(".pt"):
                    raise _refuse(file, f"holds a pickled legacy member ({name})")
                if name.endswith("config.json"):
                    config: dict[str, Any] = json.loads(archive.read(name)).get("config", {})
                    for fqn, payload in config.items():
                        path_name = str(payload.get("path_name", ""))
                        if payload.get("use_pickle") or not path_name.startswith(
                            ("weight", "tensor")
                        ):
                            raise _refuse(file, f"stores {fqn!r} as a pickled object")
            elif section == "sample_inputs" and not name.endswith("/"):
                try:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception as e:
                    raise _refuse(file, f"has sample inputs that need unpickling ({name})") from e


def read(
    file: Path, map_location: str | torch.device, settings: dict[str, Any] | None = None
) -> nn.Module:
    """The saved program's module; `settings`: keyword settings callers may leave out."""
    check_pickle_free(file)
    try:
        module = baked_eval_mode(torch.export.load(str(file)).module())
    except Exception as e:
        raise ValueError(f"could not load the exported program {file}: {e}") from e
    _fill_in(module, settings)
    if torch.device(map_location).type != "cpu":
        module = module.to(map_location)
    return module
