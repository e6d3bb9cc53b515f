"""Activation criteria (activation_mean, apoz, entropy, wanda) against values computed by hand."""

import math

import torch
from torch import nn

import prunekit as pk


def test_activation_criteria_read_the_relu_output(mlp, scores, check):
    model, x, y = mlp()  # ReLU outputs (1, 4, 2) and (3, 0, 0)
    check(scores(model, x, "activation_mean", data=[(x, y)]), [2.0, 2.0, 1.0])
    check(scores(model, x, "apoz", data=[(x, y)]), [1.0, 0.5, 0.5])
    # |fc2 column| sums (3, 1, 1) times ||relu_c|| over the samples (sqrt(10), 4, 2)
    check(scores(model, x, "wanda", data=[(x, y)]), [3 * math.sqrt(10), 4.0, 2.0])


def test_single_sample_batches_are_pooled_for_the_exported_graph(mlp, scores, check):
    # the exported graph needs a batch >= 2: batches of one sample give the same statistics
    model, x, y = mlp()
    data = [(x[:1], y[:1]), (x[1:], y[1:])]
    check(scores(model, x, "activation_mean", data=data), [2.0, 2.0, 1.0])
    check(scores(model, x, "apoz", data=data), [1.0, 0.5, 0.5])
    # a lone sample is duplicated: means unchanged
    check(scores(model, x, "activation_mean", data=[(x[1:], y[1:])]), [3.0, 0.0, 0.0])


def test_entropy_of_binned_activations(scores, check, set_weights_fn):
    # identity hidden layer: the ReLU output is the input. Channel values over 4 samples:
    # (0,0,0,0) -> one bin: 0; (1,1,1,3) in 2 bins -> (3/4, 1/4); (0,1,2,3) -> (1/2, 1/2)
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    set_weights_fn(model[0], torch.eye(3), [0, 0, 0])
    set_weights_fn(model[2], [[1, 1, 1], [1, -1, 0]], [0, 0])
    x = torch.tensor([[0, 1, 0], [0, 1, 1], [0, 1, 2], [0, 3, 3]], dtype=torch.float32)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    data = [(x, torch.zeros(4, dtype=torch.long))]
    check(scores(model.eval(), x, "entropy", data=data, bins=2), [0.0, h, math.log(2)])


def conv_model(set_weights_fn) -> nn.Module:
    """conv1 (1 -> 2, 1x1: +x and -x) -> ReLU -> conv2 (2 -> 1, weights 2 and -3)."""
    model = nn.Sequential(
        nn.Conv2d(1, 2, 1, bias=False), nn.ReLU(), nn.Conv2d(2, 1, 1, bias=False), nn.Flatten()
    )
    set_weights_fn(model[0], [1, -1])
    set_weights_fn(model[2], [2, -3])
    return model.eval()


def test_activation_criteria_aggregate_over_positions(scores, check, set_weights_fn):
    # channel 0 = relu(x): (1,2,3,0) and (0,0,0,4); channel 1 = relu(-x): (0,0,0,2) and (1,1,0,0)
    x = torch.tensor([[[[1.0, 2.0], [3.0, -2.0]]], [[[-1.0, -1.0], [0.0, 4.0]]]])
    data = [(x, torch.zeros(2, dtype=torch.long))]
    model = conv_model(set_weights_fn)
    check(scores(model, x, "activation_mean", data=data), [10 / 8, 4 / 8])
    check(scores(model, x, "apoz", data=data), [1 - 4 / 8, 1 - 5 / 8])
    check(scores(model, x, "wanda", data=data), [2 * math.sqrt(30), 3 * math.sqrt(6)])
    # pooled per sample: channel 0 (1.5, 1.0) -> two bins; channel 1 (0.5, 0.5) -> constant
    check(scores(model, x, "entropy", data=data), [math.log(2), 0.0])


def test_head_dim_channels_aggregate_every_head(zoo):
    # attention zoo model: head-dim channel j is feature j of every head of q, k and v
    model, x = zoo("attention")
    graph = pk.trace(model, x)
    (group,) = [g for g in graph.groups if g.size == model.head_dim]
    got = pk.importance.get("activation_mean").scores(graph, [group], data=[(x[0], None)])
    with torch.no_grad():
        qkv = model.qkv(model.norm(model.inp(x[0])))  # [B, T, 3 * heads * head_dim]
    expected = qkv.abs().reshape(-1, model.head_dim).mean(0).double()
    torch.testing.assert_close(got[group.key], expected)


def test_sites_and_consumers_are_reported(zoo):
    model, x = zoo("seq_cnn")
    graph = pk.trace(model, x)
    crit = pk.importance.get("apoz")
    crit.scores(graph, graph.groups, data=[(x[0], None)])
    assert all(s.startswith("activation:relu") for s in crit.sources.values())
    wanda = pk.importance.get("wanda")
    wanda.scores(graph, graph.groups, data=[(x[0], None)])
    assert wanda.sources["fc1.weight:0"] == "consumers:linear_1"


def test_calibration_uses_the_models_current_weights(mlp, scores, check):
    model, x, y = mlp()
    graph = pk.trace(model, x)
    with torch.no_grad():
        model[0].weight.mul_(2.0)  # after tracing: the exported copy is stale
        model[0].bias.mul_(2.0)
    got = pk.importance.get("activation_mean").scores(graph, graph.groups, data=[(x, y)])
    check(got[graph.groups[0].key], [4.0, 4.0, 2.0])
