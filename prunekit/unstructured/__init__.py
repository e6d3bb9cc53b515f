"""Unstructured and semi-structured sparsity: masks, N:M and block patterns, allocation, schedules.

Finding masks is kept apart from running them fast: the result is dense weights with zeros (the
contract with `prunekit.sparse`), plus a bool ``weight_mask`` buffer per pruned weight that keeps
the zeros through fine-tuning, `copy.deepcopy` and `prunekit.save` / `prunekit.load`.

>>> import torch, prunekit as pk
>>> from prunekit.unstructured import KeepMasks, sparsity_report
>>> model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
>>> report = pk.sparsify(model, sparsity=0.9, scope="global")
>>> round(sparsity_report(model).sparsity, 3)
0.9
>>> sorted(pk.unstructured.scopes.list())
['erk', 'global', 'lamp', 'local', 'std']

Fine-tune with ``prunekit.train.fit(model, data, callbacks=[KeepMasks()])`` (or prune gradually
with ``callbacks=[GradualSchedule(sparsity=0.9, every=100)]``), then `remove_masks(model)` to drop
the masks and keep the zeros.

Language models: `prune_layerwise(model, calibration_batches, sparsity=0.5, method="sparsegpt")`
prunes every linear layer one-shot, block by block ("magnitude", "wanda" or "sparsegpt";
unstructured or N:M), with the same masks.
"""

from prunekit.unstructured._importance import (
    Magnitude,
    Movement,
    Wanda,
    WeightImportance,
    importances,
)
from prunekit.unstructured._masks import (
    KeepMasks,
    apply_masks,
    masks_of,
    remove_masks,
    restore_masks,
    zero_optimizer_state,
)
from prunekit.unstructured._patterns import Pattern, parse_pattern
from prunekit.unstructured._report import LayerSparsity, SparsityReport, sparsity_report
from prunekit.unstructured._scopes import erk_densities, scopes
from prunekit.unstructured._sparsify import sparsify
from prunekit.unstructured._targets import find_targets, matrix_view
from prunekit.unstructured.layerwise import prune_layerwise
from prunekit.unstructured.schedules import (
    GradualSchedule,
    IterativeSchedule,
    one_shot,
    schedules,
)

__all__ = [
    "GradualSchedule",
    "IterativeSchedule",
    "KeepMasks",
    "LayerSparsity",
    "Magnitude",
    "Movement",
    "Pattern",
    "SparsityReport",
    "Wanda",
    "WeightImportance",
    "apply_masks",
    "erk_densities",
    "find_targets",
    "importances",
    "masks_of",
    "matrix_view",
    "one_shot",
    "parse_pattern",
    "prune_layerwise",
    "remove_masks",
    "restore_masks",
    "schedules",
    "scopes",
    "sparsify",
    "sparsity_report",
    "zero_optimizer_state",
]
