"""Resolve MODEL specs (``vgg``, ``torchvision:resnet18``, ``timm:...``, ``hf:...``, ``file.py:fn``)."""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import importlib.util
import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from prunekit.models._kws import kws_dscnn
from prunekit.models._lenet import lenet5, lenet5_caffe, lenet300
from prunekit.models._resnet import resnet20
from prunekit.models._vgg import vgg
from prunekit.models._vit import vit_tiny

_SPEC_ATTR = "_prunekit_spec"
_KWARGS_ATTR = "_prunekit_spec_kwargs"
_SOURCES = ("prunekit", "torchvision", "timm", "hf")


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    input_shape: tuple[int, ...] | None


_REGISTRY: dict[str, _Entry] = {}


def register(
    name: str, builder: Callable[..., nn.Module], *, input_shape: tuple[int, ...] | None = None
) -> None:
    """Add a model builder under ``name`` (usable as ``prunekit:NAME``); warns on overwrite."""
    if name in _REGISTRY:
        warnings.warn(f"prunekit.models: overwriting registered model {name!r}", stacklevel=2)
    _REGISTRY[name] = _Entry(builder, tuple(input_shape) if input_shape else None)


def list_models(pattern: str = "*") -> list[str]:
    """Registered (built-in) model names matching a wildcard pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


for _name, _fn in (
    ("lenet300", lenet300),
    ("lenet5", lenet5),
    ("lenet5_caffe", lenet5_caffe),
    ("vgg", vgg),
    ("resnet20", resnet20),
    ("vit_tiny", vit_tiny),
):
    register(_name, _fn, input_shape=(1, 1, 28, 28))
register("kws_dscnn", kws_dscnn, input_shape=(1, 1, 40, 101))  # keywords-synth log-mel


def set_spec(model: nn.Module, spec: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Record the MODEL spec (and builder kwargs) that rebuild ``model``'s architecture.

    Stored in the instance ``__dict__`` so it is not a parameter, buffer or submodule.
    """
    model.__dict__[_SPEC_ATTR] = spec
    model.__dict__[_KWARGS_ATTR] = dict(kwargs or {})
    return model


def spec_of(model: nn.Module) -> str | None:
    """The MODEL spec recorded by :func:`build_model` / :func:`set_spec`, or None."""
    return model.__dict__.get(_SPEC_ATTR)


def spec_kwargs_of(model: nn.Module) -> dict[str, Any]:
    """The keyword arguments the model was built with (empty if unknown)."""
    return dict(model.__dict__.get(_KWARGS_ATTR, {}))


def _split(spec: str) -> tuple[str, str]:
    """``(source, name)``; source is one of _SOURCES or "file"."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"model spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if ".py:" in spec or spec.endswith(".py"):
        return "file", spec
    if ":" in spec:
        source, name = spec.split(":", 1)
        if source in _SOURCES:
            return source, name
        raise ValueError(
            f"unknown model source {source!r} in {spec!r}; use prunekit:, torchvision:, timm:, "
            "hf: or path/to/file.py:function"
        )
    return "prunekit", spec


def _unknown(name: str, choices: list[str], what: str) -> ValueError:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    if what == "model":
        hint += f" Built-in models: {', '.join(list_models())}"
    return ValueError(f"unknown {what} {name!r}.{hint}")


def _build_prunekit(name: str, kwargs: dict[str, Any]) -> nn.Module:
    if name not in _REGISTRY:
        raise _unknown(name, list_models(), "model")
    return _REGISTRY[name].builder(**kwargs)


def _build_torchvision(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models()
    if name not in names:
        raise _unknown(name, names, "torchvision model")
    return torchvision.models.get_model(name, weights=None, **kwargs)


def _build_timm(name: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise ValueError(f"timm:{name} needs timm: pip install 'prunekit[vision]'") from exc
    if not timm.is_model(name):
        raise _unknown(name, timm.list_models(), "timm model")
    return timm.create_model(name, pretrained=False, **kwargs)


HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _build_hf(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """A transformers model from a local directory (with its weights when the directory holds
    them, as `save_pretrained` writes it) or, randomly initialised, from a config or model type."""
    try:
        import transformers
    except ImportError as exc:
        raise ValueError(f"hf:{name} needs transformers: pip install 'prunekit[nlp]'") from exc
    path = Path(name).expanduser()
    if path.is_dir() or path.name == "config.json":
        config_file = path / "config.json" if path.is_dir() else path
        if not config_file.is_file():
            raise ValueError(f"hf:{name}: no config.json in {path}")
        config = transformers.AutoConfig.from_pretrained(str(config_file.parent), **kwargs)
    else:
        try:
            config = transformers.AutoConfig.for_model(name, **kwargs)
        except ValueError:
            types = list(transformers.CONFIG_MAPPING.keys())
            raise ValueError(
                f"hf:{name} is neither a local directory with config.json nor a model type; "
                f"close model types: {', '.join(difflib.get_close_matches(name, types)) or 'none'}"
            ) from None
    weights = path.is_dir() and any((path / f).is_file() for f in HF_WEIGHTS)
    # The architecture named in the config (e.g. GPT2LMHeadModel), else a causal LM, else the base.
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls.from_pretrained(str(path), config=config) if weights else cls(config)
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModel):
        try:
            if weights:
                return auto.from_pretrained(str(path), config=config)
            return auto.from_config(config)
        except ValueError:
            continue
    raise ValueError(f"hf:{name}: transformers has no model class for {config.model_type!r}")


def _load_file(spec: str) -> tuple[str, Callable[..., nn.Module]]:
    file, _, fn_name = spec.rpartition(":") if not spec.endswith(".py") else (spec, "", "")
    path = Path(file).expanduser()
    if not fn_name:
        raise ValueError(f"model spec {spec!r} names no function: use {file}:build_fn")
    if not path.is_file():
        raise ValueError(f"model file not found: {path} (from spec {spec!r})")
    path = path.resolve()
    module_name = f"prunekit_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    assert module_spec is not None and module_spec.loader is not None  # a .py file always has one
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling-free tools look modules up here
    if str(path.parent) not in sys.path:  # its sibling modules import, as under `python file.py`
        sys.path.insert(0, str(path.parent))
    try:
        module_spec.loader.exec_module(module)
    except Exception:
        sys.modules.pop(module_name, None)
        raise
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        names = [n for n in vars(module) if not n.startswith("_") and callable(vars(module)[n])]
        close = difflib.get_close_matches(fn_name, names)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"{path} has no function {fn_name!r}{hint}")
    return f"{path}:{fn_name}", fn


def absolute_spec(spec: str, base: str | Path | None = None) -> str | None:
    """``spec`` with the file (``path/to/file.py:fn``) or directory (``hf:path/to/dir``) it names
    made absolute, when that path exists relative to ``base`` (default: the current directory);
    None for other specs and paths that do not exist there.

    A save records this form, so that it rebuilds from any working directory.

    >>> absolute_spec("torchvision:resnet18") is None
    True
    """
    try:
        source, name = _split(spec)
    except ValueError:
        return None
    if source == "file":
        file, sep, fn_name = name.rpartition(":") if not name.endswith(".py") else (name, "", "")
    elif source == "hf":
        file, sep, fn_name = name, "", ""
    else:
        return None
    path = Path(file).expanduser()
    if not path.is_absolute():
        path = Path(base if base is not None else Path.cwd()) / path
    if source == "file":
        found = path.is_file()
    else:  # what _build_hf reads as a path; other names are model types
        found = path.is_dir() or (path.name == "config.json" and path.is_file())
    if not found:
        return None
    absolute = str(path.resolve())
    return f"{absolute}{sep}{fn_name}" if source == "file" else f"hf:{absolute}"


def build_model(spec: str, **kwargs: Any) -> nn.Module:
    """Build a model (random init, no downloads) from a MODEL spec and record the spec on it.

    Specs: ``vgg`` / ``prunekit:vgg`` (built-ins: :func:`list_models`), ``torchvision:resnet18``,
    ``timm:resnet50``, ``hf:gpt2`` (a model type) or ``hf:path/to/dir`` (with config.json; with
    the weights `save_pretrained` wrote there, if any), ``path/to/file.py:build_fn``. ``kwargs`` go to the builder (for ``hf:``, to the config).

    >>> model = build_model("vgg", num_classes=10)
    >>> spec_of(model)
    'prunekit:vgg'
    """
    source, name = _split(spec)
    if source == "file":
        recorded, fn = _load_file(name)
        model = fn(**kwargs)
    else:
        builder = {
            "prunekit": _build_prunekit,
            "torchvision": _build_torchvision,
            "timm": _build_timm,
            "hf": _build_hf,
        }[source]
        model = builder(name, kwargs)
        if source == "hf" and Path(name).expanduser().exists():
            name = str(Path(name).expanduser().resolve())  # rebuildable from any directory
        recorded = f"{source}:{name}"
    if not isinstance(model, nn.Module):
        raise TypeError(f"model spec {spec!r} built a {type(model).__name__}, not an nn.Module")
    try:
        json.dumps(kwargs)
        saved = kwargs
    except TypeError:  # not JSON-serialisable kwargs cannot be replayed from a saved run
        saved = {}
    return set_spec(model, recorded, saved)


def input_shape(spec: str) -> tuple[int, ...] | None:
    """The default example input shape of a spec, when known (built-ins and torchvision
    classifiers), else None.

    >>> input_shape("vgg")
    (1, 1, 28, 28)
    """
    source, name = _split(spec)
    if source == "prunekit":
        entry = _REGISTRY.get(name)
        return entry.input_shape if entry else None
    if source == "torchvision":
        import torchvision

        if name in torchvision.models.list_models(module=torchvision.models):
            return (1, 3, 299, 299) if name == "inception_v3" else (1, 3, 224, 224)
    return None
