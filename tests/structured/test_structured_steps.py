"""Iterative pruning (`steps=`) and the measured latency target."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import prunekit as pk
import prunekit.structured.latency_target as latency_target


def _macs(model, x) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*x)
    return counter.get_total_flops() // 2


def test_steps_reach_the_ratio_and_the_plan_replays(zoo):
    model, x = zoo("residual")
    one_shot, _ = zoo("residual")
    pk.prune(one_shot, x, ratio=0.75)
    result = pk.prune(model, x, ratio=0.75, steps=3)
    assert len(result.report["steps"]) == 3 and result.verified
    for (name, p), q in zip(model.named_parameters(), one_shot.parameters()):
        # per-step rounding keeps at most one more channel than one shot per dimension
        assert all(0 <= a - b <= 1 for a, b in zip(p.shape, q.shape)), name
    fresh, _ = zoo("residual")
    pk.apply(fresh, result.plan)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(*x), model(*x))


def test_steps_rescore_between_rounds(zoo):
    """Scores after a round differ from the dense ones: step 2 must not equal a one-shot plan."""
    model, x = zoo("seq_cnn")
    calls = []
    original = pk.importance.get("l2").scores

    class Counting(type(pk.importance.get("l2"))):
        def scores(self, graph, groups, data=None):
            calls.append(sum(g.size for g in groups))
            return original(graph, groups, data=data)

    pk.prune(model, x, ratio=0.5, steps=2, importance=Counting())
    assert len(calls) == 2 and calls[1] < calls[0]  # the second round scored the smaller model


def test_steps_meet_a_macs_target(zoo):
    model, x = zoo("seq_cnn")
    dense = _macs(model, x)
    pk.prune(model, x, target={"macs": 0.3}, steps=3)
    assert abs(_macs(model, x) / dense - 0.3) <= 0.02 * 0.3 + 0.01


@pytest.mark.parametrize("steps", [0, -1, 1.5, True])
def test_bad_steps(zoo, steps):
    model, x = zoo("seq_cnn")
    with pytest.raises(ValueError, match="steps"):
        pk.prune(model, x, ratio=0.5, steps=steps)


def test_latency_target_searches_macs_until_the_measurement_fits(zoo, monkeypatch):
    """With a stand-in clock where latency = 0.2 ms + MACs / 1e6, the search converges."""
    model, x = zoo("seq_cnn")
    timed = []

    def fake_compare(a, b, inputs, **kwargs):
        ms_a, ms_b = 0.2 + _macs(a, inputs) / 1e6, 0.2 + _macs(b, inputs) / 1e6
        timed.append(inputs[0].shape[0])
        return {"speedup": ms_a / ms_b}

    monkeypatch.setattr(latency_target, "compare_latency", fake_compare)
    dense = 0.2 + _macs(model, x) / 1e6
    result = pk.prune(model, x, target={"latency": 0.6})
    info = result.report["target"]
    assert abs((0.2 + _macs(model, x) / 1e6) / dense - 0.6) <= 0.05 * 0.6
    assert info["target"] == "latency" and abs(info["measured_kept"] - 0.6) <= 0.05 * 0.6
    assert len(info["rounds"]) >= 2  # latency is not proportional to MACs here: it searched
    assert set(timed) == {x[0].shape[0]}  # timed at the user's batch, not the widened one


def test_latency_model_plans_on_predictions_and_measures_once(zoo, monkeypatch):
    """A latency model fitted with the same stand-in clock (a layer costs MACs / 1e6 ms, the
    whole model 0.2 ms more), whose fixed 0.2 ms the model first takes for time that shrinks with
    the activations: the first measurement calibrates it and the next candidate meets the target
    (without it the search needs more rounds, see above)."""
    model, x = zoo("seq_cnn")

    def clock(module, inputs):
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        fixed = 0.0 if isinstance(module, torch.nn.Linear | torch.nn.Conv2d) else 0.2
        return fixed + _macs(module, inputs) / 1e6

    def fake_compare(a, b, inputs, **kwargs):
        return {"speedup": clock(a, inputs) / clock(b, inputs)}

    monkeypatch.setattr(latency_target, "compare_latency", fake_compare)
    lm = pk.metrics.LatencyModel.fit(model, x, timer=clock)
    result = pk.prune(model, x, target={"latency": 0.6}, latency_model=lm)
    info = result.report["target"]
    assert len(info["rounds"]) <= 2
    assert abs(info["measured_kept"] - 0.6) <= 0.05 * 0.6
