"""The pipeline runner: train dense -> evaluate -> prune -> sparsify -> fine-tune -> evaluate ->
measure -> save.

Every stage records its result in `<run_dir>/state.json` (written atomically) and its model in
`<run_dir>/stages/`, so `run_recipe(..., resume=run_dir)` continues after a crash or Ctrl-C: done
stages are skipped and the training stages resume from their checkpoints.

>>> from prunekit.recipes import load_recipe, run_recipe
>>> result = run_recipe(load_recipe("default"))       # doctest: +SKIP
>>> result.report["pruned"]["accuracy"]               # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunekit._copy import deep_copy
from prunekit.recipes import _cache
from prunekit.recipes import _sparsify_stage as sparsify_stage
from prunekit.recipes._plans import check_reload
from prunekit.recipes._resolve import (
    ResolvedModel,
    eval_mode,
    example_inputs,
    require_input_shape,
    resolve_model,
)
from prunekit.recipes._rundir import atomic_write_json, check_output_dir, default_run_dir
from prunekit.recipes.recipe import Recipe
from prunekit.train import distributed

REPORT_VERSION = 1
STATE_FILE = "state.json"
REPORT_FILE = "report.json"
RECIPE_FILE = "recipe.yaml"


@dataclass
class RunResult:
    """What a run produced: its directory (a loadable saved model) and the report.json contents."""

    run_dir: Path
    report: dict[str, Any]


class _Log:
    """Stage messages on stderr (rich), silent when progress is off."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.console = None
        if enabled:
            from rich.console import Console

            self.console = Console(stderr=True, highlight=False)

    def info(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg)

    @contextmanager
    def stage(self, title: str, detail: str = "", *, spinner: bool = True):
        """Announce a stage, show a spinner while it runs (stages with their own bars pass spinner=False)."""
        start = time.perf_counter()
        timing: dict[str, float] = {}
        if self.console is None:
            yield timing
        else:
            self.console.print(f"[bold cyan]»[/] [bold]{title}[/] {detail}".rstrip())
            if spinner:
                with self.console.status(f"{title}...", spinner="dots"):
                    yield timing
            else:
                yield timing
        timing["seconds"] = round(time.perf_counter() - start, 3)
        if self.console is not None:
            self.console.print(f"  [green]done[/] in {timing['seconds']:.1f} s")


class _State:
    """Results of completed stages, persisted after each stage."""

    def __init__(self, path: Path, data: dict[str, Any] | None = None) -> None:
        self.path = path
        self.data = data or {"version": REPORT_VERSION, "stages": {}, "timings": {}}

    @classmethod
    def load(cls, run_dir: Path) -> _State:
        path = run_dir / STATE_FILE
        if path.is_file():
            return cls(path, json.loads(path.read_text()))
        return cls(path)

    def done(self, stage: str) -> bool:
        return stage in self.data["stages"]

    def get(self, stage: str) -> Any:
        return self.data["stages"].get(stage)

    def record(
        self, stage: str, result: Any, seconds: float | None = None, *, timing: str | None = None
    ) -> None:
        self.data["stages"][stage] = result
        if seconds is not None:
            key = timing or stage
            self.data["timings"][key] = round(self.data["timings"].get(key, 0.0) + seconds, 3)
        atomic_write_json(self.path, self.data)


def _call(fn, *args: Any, optional: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """Call `fn`, passing the `optional` keyword arguments only where its signature takes them."""
    import inspect

    if optional:
        params = inspect.signature(fn).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        kwargs.update({k: v for k, v in optional.items() if takes_any or k in params})
    return fn(*args, **kwargs)


def _example_inputs(shape: tuple[int, ...], batch_size: int | None = None):
    import torch

    if batch_size is not None:
        shape = (batch_size, *shape[1:])
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(shape, generator=gen),)


def _data_root(recipe: Recipe) -> str | None:
    root = recipe.data.root or os.environ.get("PRUNEKIT_DATA")
    return str(Path(root).expanduser().resolve()) if root else None


def _loaders(recipe: Recipe):
    from prunekit.data import loaders

    d = recipe.data
    return loaders(d.name, batch_size=d.batch_size, root=d.root, seed=recipe.seed, subset=d.subset)


def _preflight(recipe: Recipe) -> None:
    """Reject names the library would only reject after minutes of training."""
    if recipe.prune is None:
        return
    try:
        from prunekit import importance as imp

        names = imp.list()
    except (ImportError, AttributeError):  # registry not available: the engine will check
        return
    if names and recipe.prune.importance not in names:
        import difflib

        close = difflib.get_close_matches(recipe.prune.importance, list(names), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"recipe error: prune.importance: unknown criterion {recipe.prune.importance!r}{hint}; "
            f"available: {', '.join(sorted(names))}"
        )


def _fit(
    model,
    train_data,
    cfg,
    *,
    seed,
    checkpoint: Path,
    resume: bool,
    progress: bool,
    teacher=None,
    callbacks=(),
):
    from prunekit.train import fit

    kwargs: dict[str, Any] = dict(
        epochs=cfg.epochs,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        schedule=cfg.schedule,
        label_smoothing=cfg.label_smoothing,
        seed=seed,
        checkpoint=checkpoint,
        resume=resume and checkpoint.exists(),
        progress=progress,
        callbacks=list(callbacks),
    )
    distill = getattr(cfg, "distillation", None)
    if teacher is not None and distill is not None:
        kwargs.update(
            teacher=teacher, distill_temperature=distill.temperature, distill_weight=distill.weight
        )
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    return fit(model, train_data, **kwargs)


def _history(history: Any) -> Any:
    if history is None:
        return None
    if hasattr(history, "to_dict"):
        return history.to_dict()
    if dataclasses.is_dataclass(history):
        return dataclasses.asdict(history)
    return None


def _save(
    model, path: Path, *, spec: str | None, plan=None, metadata=None, example_inputs=None
) -> None:
    import prunekit

    prunekit.save(
        model, path, plan=plan, spec=spec, metadata=metadata, example_inputs=example_inputs
    )


def _load(path: Path):
    import prunekit

    return prunekit.load(path)


def _resolve_run_dir(recipe: Recipe, out: str | Path | None, overwrite: bool) -> Path:
    if out is not None:
        return check_output_dir(out, overwrite=overwrite)
    if recipe.out is not None:
        return check_output_dir(recipe.out, overwrite=overwrite)
    path = default_run_dir(recipe.name)
    check_output_dir(path)
    return path


def run_recipe(
    recipe: Recipe | None = None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> RunResult:
    """Run a recipe end to end and write a self-contained run directory.

    The run directory holds the final (pruned, fine-tuned) model as a prunekit saved model
    (`prunekit.load(run_dir)`), `report.json`, the resolved `recipe.yaml`, `state.json` and the
    intermediate models in `stages/`. With `resume=run_dir` the recipe is read from that directory
    and finished stages are skipped. Bad recipes, unknown models and missing data raise
    ValueError / FileNotFoundError before anything is written.
    """
    if distributed.active() and resume is not None:
        raise ValueError("--resume runs in one process: start it without torchrun")
    if not distributed.is_main():  # torchrun: only rank 0 writes the run directory
        return _run_elsewhere(recipe, progress)
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / RECIPE_FILE).is_file():
            raise FileNotFoundError(
                f"{run_dir} is not a prunekit run directory (no {RECIPE_FILE} in it)"
            )
        if recipe is not None or out is not None:
            raise ValueError(
                "--resume takes the recipe and the output directory from the run directory"
            )
        recipe = Recipe.from_yaml(run_dir / RECIPE_FILE)
        check_output_dir(run_dir, allow_existing=True)
        state = _State.load(run_dir)
    else:
        recipe = recipe if recipe is not None else _default_recipe()
        run_dir = _resolve_run_dir(recipe, out, overwrite)
        state = _State(run_dir / STATE_FILE)
    runner = _Runner(recipe, run_dir, state, resumed=resume is not None, progress=progress)
    runner.overwrite = overwrite and resume is None
    return runner.run()


def _run_elsewhere(recipe: Recipe | None, progress: bool) -> RunResult:
    """A non-zero rank's run: the same computation, written to a scratch directory."""
    import shutil
    import tempfile

    recipe = recipe if recipe is not None else _default_recipe()
    scratch = Path(tempfile.mkdtemp(prefix=f"prunekit-rank{distributed.rank()}-"))
    try:
        run_dir = scratch / "run"
        runner = _Runner(
            recipe, run_dir, _State(run_dir / STATE_FILE), resumed=False, progress=False
        )
        return runner.run()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _default_recipe() -> Recipe:
    from prunekit.recipes.recipe import load_recipe

    return load_recipe("default")


class _Runner:
    def __init__(
        self, recipe: Recipe, run_dir: Path, state: _State, *, resumed: bool, progress: bool
    ):
        self.recipe = recipe
        self.run_dir = run_dir
        self.state = state
        self.resumed = resumed
        self.progress = progress
        self.log = _Log(progress)
        self.overwrite = False
        self.stages_dir = run_dir / "stages"
        self.ckpt_dir = run_dir / "checkpoints"

    # --- setup: everything that can fail on bad input, before anything is written --------------

    def _setup(self) -> None:
        import torch

        r = self.recipe
        with self.log.stage("checking", "the model, the data and the pruning plan") as t:
            # The dense model's initial weights depend on the seed (and so does the cache key).
            torch.manual_seed(r.seed)
            self.resolved: ResolvedModel = resolve_model(r.model.spec, kwargs=r.model.kwargs)
            given = tuple(r.model.input_shape) if r.model.input_shape else None
            self.input_shape = require_input_shape(given, self.resolved, flag="model.input_shape")
            example_inputs(self.resolved.model, self.input_shape, flag="model.input_shape")
            self.train_data, self.test_data = _loaders(r)
            _preflight(r)
            if not self.state.done("prune"):
                self._preflight_plan()
            if r.sparsify is not None:
                sparsify_stage.check_names(r.sparsify, self.resolved.model)
        self.setup_seconds = t["seconds"]

    def run(self) -> RunResult:
        r = self.recipe
        wall = time.perf_counter()
        if self.resumed and self.state.done("report") and (self.run_dir / REPORT_FILE).is_file():
            self.log.info(f"run {self.run_dir} is already complete")
            return RunResult(self.run_dir, json.loads((self.run_dir / REPORT_FILE).read_text()))
        self.log.info(
            f"[bold]prunekit run[/] {r.name}: {r.model.spec} on {r.data.name} -> {self.run_dir}"
            + (" (resumed)" if self.resumed else "")
        )
        self._setup()

        # From here on the run directory exists; a failure leaves it for --resume.
        if self.overwrite and self.run_dir.is_dir():
            import shutil

            shutil.rmtree(self.run_dir)  # an earlier prunekit output (checked): start clean
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.resumed:
            resolved = dataclasses.replace(
                r,
                model=dataclasses.replace(r.model, input_shape=list(self.input_shape)),
                out=str(self.run_dir),
            )
            resolved.save(self.run_dir / RECIPE_FILE)
            self.state.record("setup", {"input_shape": list(self.input_shape)}, self.setup_seconds)
        try:
            return self._stages(wall)
        except BaseException as err:
            if hasattr(err, "add_note"):
                err.add_note(
                    f"run directory: {self.run_dir}; continue with: prunekit run --resume {self.run_dir}"
                )
            raise

    def _stages(self, wall: float) -> RunResult:
        r = self.recipe
        model = self._dense()
        dense_eval = self._evaluate("evaluate_dense", "evaluating the dense model", model)

        final_model, plan = model, None
        prune_info = sparsify_info = None
        changed = r.prune is not None or r.sparsify is not None
        if r.prune is not None:
            final_model, plan, prune_info = self._prune(model)
        if prune_info is not None and prune_info.get("exported_fallback"):
            # The exported graph has BatchNorm's mode baked in: deploy it, do not train it.
            self.log.info(
                "[yellow]warning:[/] the pruned model is the exported-graph fallback "
                "(its Python code cannot run at the new sizes); sparsity and fine-tuning skipped"
            )
        elif r.sparsify is not None:
            final_model, sparsify_info = self._sparsify_and_finetune(final_model)
        elif r.prune is not None and r.finetune is not None and r.finetune.epochs > 0:
            final_model = self._finetune(final_model)
        pruned_eval = None
        if changed:
            pruned_eval = self._evaluate(
                "evaluate_pruned", "evaluating the pruned model", final_model
            )

        profiles = self._profile(final_model if changed else None)
        report = self._report(dense_eval, pruned_eval, profiles, prune_info, wall)
        if sparsify_info is not None:
            report["sparsify"] = sparsify_info
        with self.log.stage("saving", str(self.run_dir)) as t:
            self._save_final(final_model, plan, report)
            atomic_write_json(self.run_dir / REPORT_FILE, report)
            self._write_html()
            self._cleanup()
        self.state.record("report", {"file": REPORT_FILE}, t["seconds"], timing="save")
        return RunResult(self.run_dir, report)

    # --- stages ---------------------------------------------------------------------------------

    def _dense(self):
        """Train the dense model (or take it from the cache / the run directory)."""
        r = self.recipe
        stage_dir = self.stages_dir / "dense"
        if self.state.done("dense") and (stage_dir / "prunekit.json").is_file():
            self.log.info("[dim]» dense model: done earlier, loading it[/]")
            return _load(stage_dir)

        model = self.resolved.model
        result: dict[str, Any] = {"source": "untrained"}
        train = r.train
        seconds = 0.0
        if train is not None and train.epochs > 0:
            key = self._cache_key()
            hit = _cache.lookup(r.model.spec, key) if key and train.cache else None
            if hit is not None:
                with self.log.stage("dense model", f"from the cache ({hit})") as t:
                    model = _load(hit)
                result = {"source": "cache", "cache": str(hit)}
            else:
                detail = (
                    f"{train.epochs} epoch(s), {train.optimizer} lr={train.lr} {train.schedule}"
                )
                with self.log.stage("dense training", detail, spinner=False) as t:
                    history = _fit(
                        model,
                        self.train_data,
                        train,
                        seed=r.seed,
                        checkpoint=self.ckpt_dir / "dense.pt",
                        resume=self.resumed,
                        progress=self.progress,
                    )
                result = {"source": "trained", "history": _history(history)}
                if key and train.cache:
                    result["cache"] = self._store_cache(model, key)
            seconds = t["seconds"]
        self._save_stage(model, stage_dir)
        self.state.record("dense", result, seconds, timing="train")
        return model

    def _cache_key(self) -> str | None:
        r = self.recipe
        if self.resolved.saved_dir is not None:  # a saved model may change on disk: do not cache
            return None
        import torch

        from prunekit import __version__

        train = dataclasses.asdict(r.train)
        train.pop("cache", None)
        return _cache.cache_key(
            {
                "model": r.model.spec,
                "kwargs": r.model.kwargs,
                "input_shape": list(self.input_shape),
                "data": {
                    "name": r.data.name,
                    "root": _data_root(r),
                    "subset": r.data.subset,
                    "batch_size": r.data.batch_size,
                },
                "train": train,
                "seed": r.seed,
                **({"world_size": distributed.world_size()} if distributed.active() else {}),
                "prunekit": __version__,
                "torch": torch.__version__.split("+")[0],
            }
        )

    def _store_cache(self, model, key: str) -> str | None:
        if not distributed.is_main():  # one writer; every rank trained the same weights
            return None
        try:
            path = _cache.store(
                self.recipe.model.spec,
                key,
                lambda p: _save(
                    model,
                    p,
                    spec=self.resolved.spec,
                    example_inputs=_example_inputs(self.input_shape),
                    metadata={"recipe": self.recipe.name, "cache_key": key},
                ),
            )
        except OSError as err:  # the cache is an optimisation: never fail the run for it
            self.log.info(f"[yellow]warning:[/] could not cache the dense model: {err}")
            return None
        return str(path)

    def _full_plan(self, plan):
        """The plan from the original architecture: a saved, already pruned model adds its own."""
        from prunekit.recipes._plans import compose_plans

        return compose_plans(self.resolved.plan, plan)

    def _save_stage(self, model, path: Path, plan=None) -> None:
        # prunekit.save replaces an earlier save at `path` atomically (a resumed stage).
        _save(
            model,
            path,
            spec=self.resolved.spec,
            plan=self._full_plan(plan),
            example_inputs=_example_inputs(self.input_shape),
        )

    def _evaluate(self, stage: str, title: str, model) -> dict[str, Any]:
        if self.state.done(stage):
            return self.state.get(stage)
        from prunekit.train import evaluate

        with self.log.stage(title) as t:
            result = dict(evaluate(model, self.test_data))
        if self.log.console is not None:
            self.log.info(f"  accuracy {100 * result['accuracy']:.2f}%  loss {result['loss']:.4f}")
        self.state.record(stage, result, t["seconds"])
        return result

    def _calibration(self, count: int | None = None) -> list | None:
        """The first `count` training batches (default: prune.calibration_batches)."""
        if count is None:
            count = self.recipe.prune.calibration_batches
        if not count:
            return None
        batches = []
        for i, batch in enumerate(self.train_data):
            if i >= count:
                break
            batches.append(batch)
        return batches

    def _prune_kwargs(self, calibration) -> dict[str, Any]:
        p = self.recipe.prune
        kwargs = dict(
            ratio=p.ratio,
            target=p.target,
            importance=p.importance,
            scope=p.scope,
            data=calibration,
            ignore=p.ignore or None,
            overrides=p.overrides or None,
            round_to=p.round_to,
            attention=p.attention,
        )
        if p.target and "accuracy_drop" in p.target:  # measured on held-out batches
            kwargs["eval_data"] = list(itertools.islice(self.test_data, p.eval_batches))
        return kwargs

    def _preflight_plan(self) -> None:
        """Plan the pruning on the untrained model (nothing changes), so that a bad importance,
        target, scope or ignore pattern fails now rather than after minutes of training."""
        import prunekit

        if self.recipe.prune is None:
            return
        kwargs = self._prune_kwargs(self._calibration())
        if "eval_data" in kwargs:  # accuracy means nothing before training: any budget will do
            kwargs.pop("eval_data")
            kwargs["target"] = {"macs": 0.5}
        if kwargs.get("scope") == "auto":  # its sensitivity sweep means nothing before training
            if kwargs.get("data") is None:
                raise ValueError(
                    "recipe error: prune.scope: 'auto' measures each group on calibration "
                    "batches; set prune.calibration_batches above 0"
                )
            kwargs["scope"] = "local"
        prunekit.structured.plan(self.resolved.model, _example_inputs(self.input_shape), **kwargs)

    def _prune(self, model):
        import prunekit
        from prunekit.structured import Plan

        r = self.recipe
        p = r.prune
        stage_dir = self.stages_dir / "pruned"
        if self.state.done("prune") and (stage_dir / "prunekit.json").is_file():
            self.log.info("[dim]» pruning: done earlier, loading the pruned model[/]")
            info = self.state.get("prune")
            plan = Plan.from_dict(info["plan"]) if info.get("plan") else None
            return _load(stage_dir), plan, info

        if r.finetune is not None and r.finetune.distillation is not None:
            self.teacher = eval_mode(deep_copy(model))  # prune works in place
        calibration = self._calibration()
        goal = f"ratio={p.ratio}" if p.ratio is not None else f"target={p.target}"
        with self.log.stage("pruning", f"{goal} importance={p.importance} scope={p.scope}") as t:
            result = _call(
                prunekit.structured.prune,
                model,
                _example_inputs(self.input_shape),
                **self._prune_kwargs(calibration),
                verify=p.verify,
                optional={"progress": self.progress},
            )
        plan = result.plan
        info = {
            "importance": p.importance,
            "ratio": p.ratio,
            "target": p.target,
            "scope": p.scope,
            "verified": result.verified,
            "max_error": result.max_error,
            "report": result.report,
            "plan": plan.to_dict() if plan is not None else None,
            "exported_fallback": result.model is not model,
        }
        info = json.loads(json.dumps(info, default=_jsonable))
        if self.log.console is not None:
            v = "verified" if result.verified else "[red]NOT verified[/]"
            err = "n/a" if result.max_error is None else f"{result.max_error:.1e}"
            self.log.info(f"  {v}, max error {err}")
        self._save_stage(result.model, stage_dir, plan=plan)
        self.state.record("prune", info, t["seconds"])
        return result.model, plan, info

    def _sparsify_and_finetune(self, model):
        """One-shot: sparsify, fine-tune keeping the zeros. Iterative: that, in rounds.
        Gradual: fine-tune while the schedule raises the sparsity."""
        cfg = self.recipe.sparsify
        ft = self.recipe.finetune
        data = (
            self._calibration(cfg.calibration_batches) if sparsify_stage.needs_data(cfg) else None
        )
        tune = ft is not None and ft.epochs > 0
        levels = sparsify_stage.round_levels(cfg)
        for i, level in enumerate(levels):
            number = i + 1 if len(levels) > 1 else 0
            if cfg.schedule != "gradual":
                model = self._sparsify(model, level, data, number)
            if tune:
                callbacks = sparsify_stage.finetune_callbacks(cfg, data)
                model = self._finetune(model, round_number=number, callbacks=callbacks)
        return model, sparsify_stage.summary(model, cfg)

    def _sparsify(self, model, level: float | None, data, round_number: int):
        cfg = self.recipe.sparsify
        suffix, label = _round(round_number)
        key, stage_dir = f"sparsify{suffix}", self.stages_dir / f"sparsified{suffix}"
        if self.state.done(key) and (stage_dir / "prunekit.json").is_file():
            self.log.info(f"[dim]» {key}: done earlier, loading the sparse model[/]")
            return _load(stage_dir)
        goal = f"sparsity={level}" if level is not None else f"pattern={cfg.pattern}"
        detail = f"{goal} importance={cfg.importance} scope={cfg.scope}"
        with self.log.stage("sparsifying" + label, detail) as t:
            sparsify_stage.sparsify_once(model, cfg, data, level)
        info = sparsify_stage.summary(model, cfg)
        if self.log.console is not None:
            self.log.info(f"  {info['sparsity']:.1%} of the targeted weights are zero")
        self._save_stage(model, stage_dir, plan=self._stage_plan())
        self.state.record(key, info, t["seconds"], timing="sparsify")
        return model

    def _stage_plan(self):
        info = self.state.get("prune") or {}
        if not info.get("plan"):
            return None
        from prunekit.structured import Plan

        return Plan.from_dict(info["plan"])

    def _finetune(self, model, *, round_number: int = 0, callbacks=()):
        r = self.recipe
        ft = r.finetune
        suffix, label = _round(round_number)
        key = f"finetune{suffix}"
        final_dir = self.stages_dir / f"finetuned{suffix}"
        if self.state.done(key) and (final_dir / "prunekit.json").is_file():
            self.log.info("[dim]» fine-tuning: done earlier, loading the fine-tuned model[/]")
            return _load(final_dir)
        teacher = getattr(self, "teacher", None)
        if ft.distillation is not None and teacher is None:
            teacher = eval_mode(_load(self.stages_dir / "dense"))
        detail = f"{ft.epochs} epoch(s), {ft.optimizer} lr={ft.lr} {ft.schedule}"
        if ft.distillation is not None:
            detail += (
                f", distilling (T={ft.distillation.temperature}, weight={ft.distillation.weight})"
            )
        with self.log.stage("fine-tuning" + label, detail, spinner=False) as t:
            history = _fit(
                model,
                self.train_data,
                ft,
                seed=r.seed + max(round_number, 1),
                checkpoint=self.ckpt_dir / f"{key}.pt",
                resume=self.resumed,
                progress=self.progress,
                teacher=teacher,
                callbacks=callbacks,
            )
        self._save_stage(model, final_dir, plan=self._stage_plan())
        self.state.record(key, {"history": _history(history)}, t["seconds"], timing="finetune")
        return model

    def _profile(self, pruned) -> dict[str, Any]:
        """Profile the dense and the pruned model with the same settings; latency interleaved."""
        import prunekit
        from prunekit.metrics import compare_latency

        if self.state.done("profile"):
            return self.state.get("profile")
        r = self.recipe
        dense = _load(self.stages_dir / "dense")
        inputs = _example_inputs(self.input_shape, r.eval.batch_size)
        detail = f"batch {r.eval.batch_size}" + ("" if r.eval.latency else ", latency off")
        with self.log.stage("profiling", detail) as t:
            out = {"dense": _profile_dict(prunekit.profile(dense, inputs, latency=False))}
            if pruned is None:
                if r.eval.latency:
                    out["dense"] = _profile_dict(prunekit.profile(dense, inputs, latency=True))
            else:
                out["pruned"], pruned = _profile_deployed(pruned, inputs)
                if r.eval.latency:
                    # Same process, interleaved runs: both models see the same machine noise.
                    lat = compare_latency(dense, pruned, inputs)
                    for side, key in (("dense", "a"), ("pruned", "b")):
                        out[side].update(
                            latency_ms=lat[f"{key}_ms"],
                            latency_p10_ms=lat[f"{key}_p10_ms"],
                            latency_p90_ms=lat[f"{key}_p90_ms"],
                            latency_runs=lat["runs"],
                            latency_warmup=lat["warmup"],
                            latency_allocator=lat["allocator"],
                            threads=lat["threads"],
                        )
                    out["latency"] = {
                        "speedup": lat["speedup"],
                        "interleaved": True,
                        "runs": lat["runs"],
                    }
        out = json.loads(json.dumps(out, default=_jsonable))
        self.state.record("profile", out, t["seconds"])
        return out

    def _report(self, dense_eval, pruned_eval, profiles, prune_info, wall) -> dict[str, Any]:
        import torch

        from prunekit.metrics import environment

        r = self.recipe
        timings = dict(self.state.data["timings"])
        timings["total"] = round(sum(timings.values()), 3)
        env = dict(environment())
        env.update(
            seed=r.seed,
            threads=torch.get_num_threads(),
            batch_size=r.eval.batch_size,
            train_batch_size=r.data.batch_size,
        )

        def side(evaluation, profile):
            if evaluation is None:
                return None
            return {
                **profile,
                **{k: evaluation[k] for k in ("accuracy", "loss", "n") if k in evaluation},
            }

        prune = None
        if prune_info is not None:
            prune = {k: v for k, v in prune_info.items() if k != "plan"}
            plan = prune_info.get("plan") or {}
            groups = plan.get("groups") or []
            prune["groups"] = len(groups)
            prune["groups_pruned"] = sum(
                1 for g in groups if len(g.get("keep", [])) < g.get("size", 0)
            )
        dense_stage = self.state.get("dense") or {}
        return {
            "version": REPORT_VERSION,
            "kind": "prunekit-run",
            "recipe": r.name,
            "run_dir": str(self.run_dir),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": {"spec": r.model.spec, "input_shape": list(self.input_shape)},
            "data": {"name": r.data.name, "subset": r.data.subset, "batch_size": r.data.batch_size},
            "dense": side(dense_eval, profiles["dense"]),
            "pruned": side(pruned_eval, profiles.get("pruned", {})),
            "latency": profiles.get("latency"),
            "prune": prune,
            "dense_source": dense_stage.get("source"),
            "environment": env,
            "timings": timings,
            "history": {"dense": dense_stage.get("history"), **self._finetune_histories()},
            "wall_time": round(time.perf_counter() - wall, 3),
            "resumed": self.resumed,
        }

    def _write_html(self) -> None:
        """report.html beside report.json; a plotting failure must not fail a finished run."""
        from prunekit.report import write_html

        try:
            write_html(self.run_dir)
        except Exception as err:  # noqa: BLE001 - the report.json is the record; HTML is a view
            self.log.info(f"[yellow]warning:[/] report.html not written: {err}")

    def _finetune_histories(self) -> dict[str, Any]:
        """`finetune`, or `finetune round N` for each round of an iterative schedule."""
        stages = self.state.data["stages"]
        out = {
            key.replace("_", " round "): (value or {}).get("history")
            for key, value in stages.items()
            if key == "finetune" or key.startswith("finetune_")
        }
        return out or {"finetune": None}

    def _cleanup(self) -> None:
        """Once the run is complete, drop what only a resume needed: the training checkpoints
        (weights + optimizer state) and the fine-tuned stage (the same model as the run directory)."""
        import shutil

        shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        for stage in self.stages_dir.glob("finetuned*"):
            shutil.rmtree(stage, ignore_errors=True)

    def _save_final(self, model, plan, report) -> None:
        """The final model goes at the top of the run directory, so `prunekit.load(run_dir)` works."""
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix=".final.", dir=self.run_dir))
        try:
            target = tmp / "model"
            _save(
                model,
                target,
                spec=self.resolved.spec,
                plan=self._full_plan(plan),
                metadata=_final_metadata(report),
                example_inputs=_example_inputs(self.input_shape),
            )
            check_reload(target, model, _example_inputs(self.input_shape))
            # Weights first, description last: a crash in between leaves a save that load rejects
            # (checksum) rather than one that silently describes other weights.
            for item in sorted(target.iterdir(), key=lambda p: p.name == "prunekit.json"):
                os.replace(item, self.run_dir / item.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _round(number: int) -> tuple[str, str]:
    """(stage-key suffix, log label) of round `number` of an iterative schedule; 0: no rounds."""
    return (f"_{number}", f" round {number}") if number else ("", "")


def _without_masks(model):
    """The deployable form of a sparse model: the zeros stay in the dense weights, the masks and
    their hooks (which only keep the zeros during training) go. Other models are returned as is."""
    from prunekit.unstructured import masks_of, remove_masks

    if model is None or not masks_of(model):
        return model
    model = deep_copy(model)
    remove_masks(model)
    return model


def _profile_deployed(model, inputs) -> tuple[dict[str, Any], Any]:
    """(profile dict, deployed model) of a pruned `model`: costs measured as deployed
    (`_without_masks`), size measured on `model` itself, since that is what gets saved. Its masks
    are written with it, so sizing the deployed copy fell short of the file on disk."""
    import prunekit
    from prunekit.metrics.size import size_fields

    deployed = _without_masks(model)
    data = _profile_dict(prunekit.profile(deployed, inputs, latency=False, size=False))
    return {**data, **size_fields(model)}, deployed


def _final_metadata(report: dict[str, Any]) -> dict[str, Any]:
    """What the saved model says about itself (the full story is in report.json beside it)."""
    keys = ("accuracy", "params", "macs", "latency_ms")
    meta: dict[str, Any] = {"recipe": report["recipe"], "report": REPORT_FILE}
    for side in ("dense", "pruned"):
        if report.get(side):
            meta[side] = {k: report[side].get(k) for k in keys}
    if report.get("sparsify"):
        meta["sparsify"] = {k: v for k, v in report["sparsify"].items() if k != "layers"}
    if report.get("prune"):
        meta["prune"] = {
            k: report["prune"].get(k)
            for k in ("importance", "ratio", "target", "scope", "verified", "max_error")
        }
    return meta


def _profile_dict(prof) -> dict[str, Any]:
    data = prof.to_dict()
    data.pop("machine", None)  # the report has one `environment` for the whole run
    return data


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, tuple | set):
        return list(obj)
    return str(obj)
