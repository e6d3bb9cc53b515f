"""Plans of models pruned more than once, and a check that a save rebuilds the model it holds.

A save records ONE plan, replayed on the freshly built architecture. A model loaded from a save
that was already pruned and then pruned again therefore needs the two plans composed into one
that maps the ORIGINAL channels to the ones that survive both rounds
(`prunekit.structured.plan.compose_plans`).
"""

from __future__ import annotations

from pathlib import Path

from prunekit.structured.plan import compose_plans

__all__ = ["check_reload", "compose_plans"]


def check_reload(path: Path, model, example_inputs: tuple, *, tolerance: float = 1e-5) -> None:
    """Load the save at `path` and require it to compute what `model` computes (else RuntimeError)."""
    import torch

    import prunekit
    from prunekit.recipes._resolve import eval_mode

    reloaded = eval_mode(prunekit.load(path))
    eval_mode(model)
    with torch.inference_mode():
        want = model(*example_inputs)
        got = reloaded(*example_inputs)
    if not isinstance(want, torch.Tensor) or not isinstance(got, torch.Tensor):
        return  # structured outputs: load() already checked every tensor's name and shape
    scale = want.abs().max().clamp_min(1e-12)
    error = float((got - want).abs().max() / scale)
    if not error <= tolerance:
        raise RuntimeError(
            f"the saved model does not reproduce the pruned one (relative error {error:.2e}); "
            "nothing was kept. Please report this with the model spec"
        )
