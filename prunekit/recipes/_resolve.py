"""Turn a MODEL argument (a spec or a saved prunekit directory) into a model and an input shape."""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

SAVED_MARKER = "prunekit.json"


@dataclass
class ResolvedModel:
    model: nn.Module
    spec: (
        str | None
    )  # what rebuilds the architecture (for a saved directory: the spec stored in it)
    input_shape: tuple[int, ...] | None  # the default example input shape, if known
    saved_dir: Path | None = None  # set when the model was loaded with prunekit.load
    plan: dict[str, Any] | None = None  # the plan a saved model was already pruned with
    label: str = ""  # the MODEL argument as given, for messages and tables


def is_saved_dir(arg: str | Path) -> bool:
    return Path(arg).is_dir() and (Path(arg) / SAVED_MARKER).is_file()


def parse_input_shape(text: str | list[int] | tuple[int, ...] | None) -> tuple[int, ...] | None:
    """'1,3,224,224' (or '1x3x224x224', or a list) -> (1, 3, 224, 224); ValueError with the fix."""
    if text is None:
        return None
    if isinstance(text, list | tuple):
        dims = list(text)
    else:
        body = text.strip().strip("()[]").strip()
        # numbers separated by one comma, x or blank each ("1,x,3" is a typo, not 1,3)
        sep = r"\s*[,x]\s*|\s+"
        well_formed = re.fullmatch(rf"\d+(({sep})\d+)*\s*,?", body) is not None
        dims = [int(p) for p in re.split(sep, body.rstrip(",")) if p] if well_formed else []
    if not dims or any(not isinstance(d, int) or d <= 0 for d in dims):
        raise ValueError(
            f"bad input shape {text!r}: give positive integers separated by commas, "
            "batch first, e.g. --input-shape 1,3,224,224"
        )
    return tuple(dims)


def _shape_from_metadata(meta: dict[str, Any]) -> tuple[int, ...] | None:
    """The example input shape of a saved directory: that of the first tensor of the example
    inputs it records (`prunekit.io._format.recorded_input_specs` finds them)."""
    from prunekit.io._format import first_input_shape, recorded_input_specs

    return first_input_shape(recorded_input_specs(meta))


# Models loaded from a save whose recorded example inputs are more than one tensor (a dict of
# inputs, several positional ones): `example_inputs` rebuilds those rather than one tensor.
_RECORDED_INPUTS: weakref.WeakKeyDictionary[Any, list[dict[str, Any]]] = weakref.WeakKeyDictionary()


def _structured(specs: list[dict[str, Any]] | None) -> bool:
    """Whether recorded inputs need more than an input shape to rebuild (not one lone tensor)."""
    return bool(specs) and not (len(specs) == 1 and "shape" in specs[0])


def resolve_model(arg: str | Path, *, kwargs: dict[str, Any] | None = None) -> ResolvedModel:
    """Build `arg` as a spec (prunekit.models.build_model) or load it as a saved directory."""
    arg = str(arg)
    if is_saved_dir(arg):
        import prunekit
        from prunekit.io import read_metadata
        from prunekit.io._format import recorded_input_specs
        from prunekit.io.saveload import saved_spec

        meta = read_metadata(arg)
        model = prunekit.load(arg)
        specs = recorded_input_specs(meta)
        if _structured(specs):
            _RECORDED_INPUTS[model] = specs
        return ResolvedModel(
            model,
            saved_spec(meta, Path(arg)),
            _shape_from_metadata(meta),
            Path(arg),
            meta.get("plan") or None,
            arg,
        )
    if Path(arg).is_dir():
        raise FileNotFoundError(
            f"{arg} is a directory but not a saved prunekit model (no {SAVED_MARKER} in it)"
        )
    from prunekit.models import build_model, input_shape

    model = build_model(arg, **(kwargs or {}))
    shape = input_shape(arg) or (TOKEN_INPUT_SHAPE if token_vocab(model) else None)
    return ResolvedModel(model, arg, tuple(shape) if shape else None, label=arg)


TOKEN_INPUT_SHAPE = (1, 32)  # the default example input of a model that reads token ids


def token_vocab(model: nn.Module) -> int | None:
    """The vocabulary size when `model` reads token ids (its input embedding, as transformers
    names it, or its first leaf module, is an `nn.Embedding`), else None."""
    from torch import nn

    embedding = None
    getter = getattr(model, "get_input_embeddings", None)
    if callable(getter):
        try:
            embedding = getter()
        except (NotImplementedError, AttributeError):
            embedding = None
    if embedding is None:
        leaves = (m for m in model.modules() if not any(True for _ in m.children()))
        embedding = next(leaves, None)
    return embedding.num_embeddings if isinstance(embedding, nn.Embedding) else None


def require_input_shape(
    given: tuple[int, ...] | None, resolved: ResolvedModel, *, flag: str = "--input-shape"
) -> tuple[int, ...]:
    shape = given or resolved.input_shape
    if shape is None:
        raise ValueError(
            f"cannot tell the input shape of {resolved.label!r}; pass {flag}, e.g. {flag} 1,3,224,224"
        )
    return tuple(shape)


def eval_mode(model: nn.Module) -> nn.Module:
    """`model.eval()`, tolerating the exported-graph fallback (whose module cannot switch modes)."""
    try:
        model.eval()
    except NotImplementedError:
        pass
    return model


def example_inputs(
    model: nn.Module, shape: tuple[int, ...], *, seed: int = 0, flag: str = "--input-shape"
) -> tuple:
    """A random example input of `shape`, checked by one forward pass so that a wrong shape is
    reported as bad input (ValueError naming the shape) rather than as a failure deep inside.
    Models that read token ids (see `token_vocab`) get random ids below their vocabulary size."""
    import torch

    recorded = _recorded_inputs(model, shape, seed)
    if recorded is not None:
        return _checked(model, recorded, flag)
    vocab = token_vocab(model)
    floats = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    candidates = [floats]
    if vocab:  # token ids first, unless only the first leaf module suggests them
        ids = torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))
        reads_ids = callable(getattr(model, "get_input_embeddings", None))
        candidates = [ids, floats] if reads_ids else [floats, ids]
    was_training = getattr(model, "training", False)
    eval_mode(model)
    errors: list[BaseException] = []
    try:
        for x in candidates:
            try:
                with torch.inference_mode():
                    model(x)
                return (x,)
            except (RuntimeError, ValueError, TypeError, IndexError) as err:
                errors.append(err)
    finally:
        if was_training:
            model.train()
    error = errors[0]  # the likelier input's (token ids for a model that reads them)
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise ValueError(
            f"the model is an encoder-decoder ({first}): it needs decoder inputs too, and the "
            "command line passes one input tensor; prune it from Python with "
            "example_kwargs={'decoder_input_ids': ...}"
        ) from None
    raise ValueError(
        f"the model cannot run on an input of shape {tuple(shape)} ({first}); "
        f"check {flag} (batch first, e.g. 1,3,224,224)"
    ) from None


def _recorded_inputs(model: nn.Module, shape: tuple[int, ...], seed: int) -> tuple | None:
    """The structured example inputs recorded in the save `model` was loaded from, at the batch
    size of `shape`, when `shape` is their input shape (that of their first tensor) up to the
    batch; else None (a lone tensor of `shape` is made)."""
    try:
        specs = _RECORDED_INPUTS.get(model)
    except TypeError:  # not weak-referenceable: not loaded by resolve_model
        return None
    if specs is None:
        return None
    return _at_shape(specs, shape, seed)


def _at_shape(specs: list[dict[str, Any]], shape: tuple[int, ...], seed: int) -> tuple | None:
    """Recorded inputs rebuilt at the batch size of `shape`, when `shape` is their input shape
    (that of their first tensor) up to the batch; else None."""
    from prunekit.io._export_inputs import from_specs
    from prunekit.io._format import first_input_shape

    recorded = first_input_shape(specs)
    if recorded is None or tuple(recorded[1:]) != tuple(shape[1:]):
        return None
    return from_specs(specs, seed=seed, batch=shape[0])


def saved_example_inputs(directory: str | Path, shape: tuple[int, ...], *, seed: int = 0) -> tuple:
    """Example inputs of `shape` for the save at `directory` without loading it: the structured
    inputs it records (a dict of inputs...) at that batch size when `shape` is their input shape,
    else one random tensor of `shape`."""
    import torch

    from prunekit.io import read_metadata
    from prunekit.io._format import recorded_input_specs

    specs = recorded_input_specs(read_metadata(directory))
    if _structured(specs) and (inputs := _at_shape(specs, tuple(shape), seed)) is not None:
        return inputs
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)),)


def _checked(model: nn.Module, inputs: tuple, flag: str) -> tuple:
    """`inputs`, once the model ran on them (ValueError naming them otherwise)."""
    import torch

    was_training = getattr(model, "training", False)
    eval_mode(model)
    try:
        with torch.inference_mode():
            model(*inputs)
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"the model cannot run on the example inputs recorded in its save ({first}); "
            f"pass {flag}"
        ) from None
    finally:
        if was_training:
            model.train()
    return inputs
