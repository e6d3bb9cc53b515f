"""Masks keep pruned weights at exactly zero: fine-tuning, optimizer state, deepcopy, save/load."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.train import fit
from prunekit.unstructured import (
    KeepMasks,
    masks_of,
    remove_masks,
    sparsify,
    sparsity_report,
)


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)
    )


def batches(n: int = 6, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 6, 6, generator=gen), torch.randint(0, 10, (8,), generator=gen))] * n


def pruned_are_zero(model: nn.Module) -> bool:
    params = dict(model.named_parameters())
    return all(bool((params[n].detach()[~m] == 0).all()) for n, m in masks_of(model).items())


def stepped(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    for x, y in batches(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
        lambda p: torch.optim.Adam(p, lr=0.05),
        lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1),
    ],
    ids=["sgd-momentum-wd", "adam", "adamw"],
)
def test_optimizer_built_before_pruning_cannot_revive_weights(make_opt):
    model = net()
    opt = make_opt(model.parameters())
    stepped(model, opt, 3)  # momentum / moments are nonzero everywhere
    sparsify(model, 0.7)
    kept_before = {n: m.clone() for n, m in masks_of(model).items()}
    model.train()
    stepped(model, opt, 1)  # stale momentum moves pruned weights during the step...
    model(batches(1)[0][0])
    assert pruned_are_zero(model)  # ...and the forward-pre-hook re-zeroes them before use
    # with KeepMasks (as fit runs it) they are zero after every step and the state is cleared
    keep = KeepMasks()
    state = type("S", (), {"model": model, "optimizer": opt})()
    for _ in range(4):
        stepped(model, opt, 1)
        keep.on_step_end(state)
        assert pruned_are_zero(model)
    for param in model.parameters():
        for value in opt.state[param].values():
            if value.shape == param.shape and param is model[0].weight:
                assert (value[~model[0].weight_mask] == 0).all()
    assert all(torch.equal(kept_before[n], m) for n, m in masks_of(model).items())


def test_gradients_of_pruned_weights_are_zero():
    model = net()
    sparsify(model, 0.5)
    model.train()
    x, y = batches(1)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    for name, mask in masks_of(model).items():
        grad = dict(model.named_parameters())[name].grad
        assert (grad[~mask] == 0).all() and (grad[mask] != 0).any()


def test_fit_with_keepmasks_sgd_and_adamw():
    for optimizer in ("sgd", "adamw"):
        model = net()
        sparsify(model, 0.8, scope="local")
        zeros = sparsity_report(model).numel - sparsity_report(model).nonzeros
        fit(model, batches(), epochs=2, optimizer=optimizer, lr=0.05, callbacks=[KeepMasks()],
            progress=False)  # fmt: skip
        assert pruned_are_zero(model)
        assert sparsity_report(model).numel - sparsity_report(model).nonzeros == zeros


def test_gradient_accumulation_over_two_forwards_works():
    model = net()
    sparsify(model, 0.5)
    model.train()
    (x, y), (x2, y2) = batches(2)[0], batches(2, seed=1)[0]
    loss = nn.functional.cross_entropy(model(x), y) + nn.functional.cross_entropy(model(x2), y2)
    loss.backward()  # no in-place modification error: nothing to re-zero between the forwards


def test_deepcopy_keeps_masks_and_enforces_them_on_the_copy():
    model = net()
    sparsify(model, 0.6)
    twin = copy.deepcopy(model)
    assert all(torch.equal(masks_of(model)[n], m) for n, m in masks_of(twin).items())
    assert twin[0].weight_mask is not model[0].weight_mask
    opt = torch.optim.SGD(twin.parameters(), lr=0.5, momentum=0.9)
    twin.train()
    stepped(twin, opt, 3)
    x, y = batches(1)[0]
    nn.functional.cross_entropy(twin(x), y).backward()
    assert pruned_are_zero(twin)
    assert all((p.grad[~masks_of(twin)[n]] == 0).all() for n, p in twin.named_parameters()
               if n in masks_of(twin))  # fmt: skip
    assert pickle.loads(pickle.dumps(twin))[0].weight_mask.shape == twin[0].weight.shape


def test_state_dict_holds_the_masks():
    model = net()
    sparsify(model, 0.5)
    state = model.state_dict()
    assert state["0.weight_mask"].dtype == torch.bool
    assert torch.equal(state["3.weight_mask"], model[3].weight != 0)


def test_save_and_load_restore_identical_masks(tmp_path):
    model = net()
    sparsify(model, 0.75, scope="erk")
    path = pk.save(model, tmp_path / "sparse")
    doc = json.loads((path / "prunekit.json").read_text())
    assert doc["masks"] == ["0.weight", "3.weight"]
    loaded = pk.load(path, build=net)
    assert set(masks_of(loaded)) == set(masks_of(model))
    for name, mask in masks_of(model).items():
        assert torch.equal(masks_of(loaded)[name], mask)
    x = batches(1)[0][0]
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model.eval()(x))
    opt = torch.optim.SGD(loaded.parameters(), lr=0.5, momentum=0.9)
    loaded.train()
    stepped(loaded, opt, 2)
    loaded(x)
    assert pruned_are_zero(loaded)


def test_remove_masks_keeps_zeros_and_drops_everything_else():
    model = net()
    sparsify(model, 0.5)
    zeros = [(m.weight == 0).clone() for m in (model[0], model[3])]
    assert remove_masks(model) == ["0.weight", "3.weight"]
    assert masks_of(model) == {} and "0.weight_mask" not in model.state_dict()
    assert not model[0]._forward_pre_hooks
    for m, z in zip((model[0], model[3]), zeros):
        assert torch.equal(m.weight == 0, z)
    x, y = batches(1)[0]
    model.train()
    nn.functional.cross_entropy(model(x), y).backward()
    assert (model[0].weight.grad[zeros[0]] != 0).any()  # no longer masked


def test_eval_inference_does_not_touch_weights():
    model = net()
    sparsify(model, 0.5)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # a deliberate edit, visible to inference in eval mode
    model.eval()
    with torch.no_grad():
        model(batches(1)[0][0])
    assert (model[0].weight != 0).all()
    model.train()
    model(batches(1)[0][0])  # training forward: zeros restored
    assert pruned_are_zero(model)


def test_masked_model_traces_and_exports():
    model = net().train()
    sparsify(model, 0.5)
    x = batches(1)[0][0]
    graph = pk.trace(model, x)
    assert graph is not None
    program = torch.export.export(model.eval(), (x,))
    with torch.no_grad():
        assert torch.allclose(program.module()(x), model(x))


def test_resized_layer_fails_clearly():
    model = net()
    sparsify(model, 0.5)
    model[3].weight = nn.Parameter(torch.randn(5, 4 * 6 * 6))
    model.train()
    with pytest.raises(ValueError, match="remove_masks"):
        model(batches(1)[0][0])


def test_structured_pruning_slices_the_masks_with_their_weights(tmp_path):
    model = net()
    sparsify(model, 0.6)
    x = batches(1)[0][0]
    result = pk.prune(model, x, ratio=0.5)
    assert result.verified and model[0].weight_mask.shape == model[0].weight.shape == (2, 1, 3, 3)
    assert model[3].weight_mask.shape == model[3].weight.shape == (10, 2 * 6 * 6)
    model.train()
    stepped(model, torch.optim.SGD(model.parameters(), lr=0.5), 2)
    model(x)
    assert pruned_are_zero(model)
    loaded = pk.load(pk.save(model, tmp_path / "both", plan=result.plan), build=net)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model.eval()(x))
