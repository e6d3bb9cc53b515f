"""Every zoo model through every registered criterion, and the planted-dead-channel proof."""

import pytest
import torch

import prunekit as pk


@pytest.mark.parametrize("importance", pk.importance.list())
def test_zoo_prunes_and_verifies(zoo, zoo_name, importance):
    from prunekit.importance.testing import calibration_batches

    model, x = zoo(zoo_name)
    shape = model(*x).shape
    params = sum(p.numel() for p in model.parameters())
    needs_data = pk.importance.get(importance).requires_data
    data = calibration_batches(model, x) if needs_data else None
    result = pk.prune(model, x, ratio=0.5, importance=importance, data=data)
    assert result.verified and result.max_error <= 1e-4
    assert result.model(*x).shape == shape
    assert sum(p.numel() for p in result.model.parameters()) < params


def _plant_dead_channels(graph, model, fraction=0.25, seed=0):
    """Zero every parameter slice of a random `fraction` of each group's channels."""
    from prunekit.importance.base import member_slices

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for group in graph.groups:
            dead = torch.randperm(group.size, generator=gen)[: int(fraction * group.size)]
            for tensor, dim, index in member_slices(graph, group):
                target = graph.model.get_parameter(
                    next(
                        m.name
                        for m in group.members
                        if graph.model.get_parameter(m.name) is not None
                        and graph.model.get_parameter(m.name).data_ptr() == tensor.data_ptr()
                    )
                )
                hit = torch.isin(index, dead).nonzero().flatten()
                target.index_fill_(dim, hit, 0.0)


# Models whose norms take statistics over channels (LayerNorm, GroupNorm) are excluded: a zeroed
# channel still counts in those statistics, so "dead" is not "absent" there (verification covers
# them instead).
@pytest.mark.parametrize(
    "name",
    [
        "seq_cnn",
        "residual",
        "concat",
        "squeeze_excite",
        "shuffle",
        "layer_scale",
        "tied_lm",
        "recurrent",
    ],
)
def test_planted_dead_channels_pruned_exactly(zoo, name):
    model, x = zoo(name)
    graph = pk.trace(model, x)
    _plant_dead_channels(graph, model)
    expected = model(*x)
    result = pk.prune(model, x, ratio=0.25, importance="l1")
    assert result.plan.pruned_groups
    torch.testing.assert_close(result.model(*x), expected, rtol=1e-5, atol=1e-6)
