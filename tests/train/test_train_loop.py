"""prunekit.train: fit (determinism, exact resume, callbacks, distillation) and evaluate."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import stat
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.data import TensorBatches, loaders, write_idx_fixture
from prunekit.models import build_model
from prunekit.train import Callback, evaluate, fit, load_checkpoint, save_checkpoint, set_seed


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3)
    )


def tiny_data(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, x[:, :3].argmax(1)  # learnable: the largest of the first three features


def tiny_batches(batch_size: int = 16) -> TensorBatches:
    return TensorBatches(*tiny_data(), batch_size, shuffle=True, seed=0)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class InterruptAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state) -> None:
        if state.step == self.step:
            raise KeyboardInterrupt


def test_fit_learns_and_reports_history() -> None:
    model = tiny_model()
    train = tiny_batches()
    history = fit(model, train, epochs=6, lr=0.1, eval_data=train, progress=False)
    assert history.epochs == 6 and history.steps == [6, 12, 18, 24, 30, 36]
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.eval_acc[-1] > 0.8
    data = history.to_dict()
    json.dumps(data)
    assert set(data) == {
        "train_loss",
        "train_acc",
        "eval_loss",
        "eval_acc",
        "lr",
        "steps",
        "seconds",
    }
    assert model.training  # the previous mode is restored


def test_fit_on_fashion_fixture_with_lenet5(tmp_path: Path) -> None:
    root = write_idx_fixture(tmp_path, n_train=160, n_test=40)
    train, test = loaders("fashion-mnist", root=root, batch_size=16)
    torch.manual_seed(0)
    model = build_model("lenet5")
    history = fit(model, train, epochs=4, lr=0.05, eval_data=test, progress=False)
    assert history.eval_acc[-1] >= 0.9


def test_same_seed_gives_identical_weights() -> None:
    a, b, c = tiny_model(), tiny_model(), tiny_model()
    fit(a, tiny_batches(), epochs=1, seed=3, progress=False)
    fit(b, tiny_batches(), epochs=1, seed=3, progress=False)
    fit(c, tiny_batches(), epochs=1, seed=4, progress=False)  # other dropout masks
    assert same_weights(a, b)
    assert not same_weights(a, c)


@pytest.mark.parametrize("interrupt_step", [3, 6, 9])  # mid-epoch 1, epoch end, mid-epoch 2
def test_interrupted_run_resumes_to_identical_weights(tmp_path: Path, interrupt_step: int) -> None:
    kwargs = dict(epochs=2, lr=0.1, progress=False, eval_data=tiny_batches())
    reference = tiny_model()
    expected = fit(reference, tiny_batches(), **kwargs)

    ckpt = tmp_path / "run.ckpt"
    model = tiny_model()
    with pytest.raises(KeyboardInterrupt):
        fit(
            model,
            tiny_batches(),
            checkpoint=ckpt,
            callbacks=[InterruptAt(interrupt_step)],
            **kwargs,
        )
    assert load_checkpoint(ckpt)["step"] == interrupt_step
    set_seed(1234)  # the resumed run must not depend on the RNG state it starts with
    resumed = tiny_model(seed=99)  # nor on the weights it starts with
    history = fit(resumed, tiny_batches(), checkpoint=ckpt, resume=True, **kwargs)
    assert same_weights(resumed, reference)
    assert history.train_loss == expected.train_loss
    assert history.eval_acc == expected.eval_acc and history.steps == expected.steps


def test_resume_with_a_shuffling_dataloader(tmp_path: Path) -> None:
    def data() -> DataLoader:
        return DataLoader(TensorDataset(*tiny_data()), batch_size=16, shuffle=True)

    kwargs = dict(epochs=2, lr=0.1, progress=False, seed=7)
    reference = tiny_model()
    fit(reference, data(), **kwargs)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_model(), data(), checkpoint=ckpt, callbacks=[InterruptAt(8)], **kwargs)
    resumed = tiny_model()
    fit(resumed, data(), checkpoint=ckpt, resume=True, **kwargs)
    assert same_weights(resumed, reference)


def test_sigint_is_deferred_to_a_consistent_checkpoint(tmp_path: Path) -> None:
    class CtrlC(Callback):
        def on_step_end(self, state) -> None:
            if state.step == 4:
                signal.raise_signal(signal.SIGINT)
                self.after = state.step  # the handler did not raise inside the callback

    ckpt, ctrl_c = tmp_path / "run.ckpt", CtrlC()
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN under nohup, else the default handler
    with pytest.raises(KeyboardInterrupt):
        fit(
            tiny_model(),
            tiny_batches(),
            epochs=2,
            checkpoint=ckpt,
            callbacks=[ctrl_c],
            progress=False,
        )
    assert ctrl_c.after == 4 and load_checkpoint(ckpt)["step"] == 4
    assert signal.getsignal(signal.SIGINT) is before  # fit restored the caller's handler


def test_checkpoint_every_is_atomic_and_safe_to_load(tmp_path: Path) -> None:
    ckpt = tmp_path / "sub" / "run.ckpt"
    seen = []

    class Watch(Callback):
        def on_step_end(self, state) -> None:
            if ckpt.exists():
                seen.append(load_checkpoint(ckpt)["step"])

    fit(tiny_model(), tiny_batches(), epochs=1, checkpoint=ckpt, checkpoint_every=2, callbacks=[Watch()], progress=False)  # fmt: skip
    assert seen == [2, 2, 4, 4]  # the save at step N happens right after its callbacks
    data = torch.load(ckpt, weights_only=True)
    assert data["finished"] and data["epoch"] == 1 and data["batch"] == 0
    assert [p.name for p in ckpt.parent.iterdir()] == ["run.ckpt"]  # no temporary left over
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path / "bad.ckpt")


def test_checkpoints_get_the_permissions_of_the_umask(tmp_path: Path) -> None:
    """Like any file the user writes (and like saves): not mkstemp's private 0600."""
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "ckpt" / "run.ckpt", {"step": 1})
        os.umask(0o027)
        save_checkpoint(tmp_path / "group.ckpt", {"step": 2})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ckpt").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "ckpt" / "run.ckpt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "group.ckpt").stat().st_mode) == 0o640
    assert load_checkpoint(tmp_path / "group.ckpt")["step"] == 2


def test_resume_rules(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    model = tiny_model()
    first = fit(model, tiny_batches(), epochs=1, checkpoint=ckpt, progress=False)
    done = copy.deepcopy(model.state_dict())
    # A finished run resumes to the same result without training.
    again = fit(model, tiny_batches(), epochs=1, checkpoint=ckpt, resume=True, progress=False)
    assert again.train_loss == first.train_loss and same_weights(model, model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in done.items())
    with pytest.raises(ValueError, match="run of 6 steps"):
        fit(model, tiny_batches(), epochs=3, checkpoint=ckpt, resume=True, progress=False)
    # resume=True without a checkpoint file starts afresh.
    fresh = fit(tiny_model(), tiny_batches(), epochs=1, checkpoint=tmp_path / "new.ckpt", resume=True, progress=False)  # fmt: skip
    assert fresh.train_loss == first.train_loss


def test_callbacks_order_masks_and_stop() -> None:
    events: list[str] = []
    mask = torch.rand(16, 8) > 0.5

    class Recorder:  # a plain object with some hooks is enough
        def on_train_begin(self, state) -> None:
            events.append("begin")

        def on_step_end(self, state) -> None:
            with torch.no_grad():  # right after optimizer.step(): keep pruned weights at zero
                state.model[0].weight.mul_(mask)
            events.append(f"step{state.step}")

        def on_epoch_end(self, state) -> None:
            events.append(f"epoch{state.epoch}")

        def on_train_end(self, state) -> None:
            events.append("end")

    model = tiny_model()
    fit(model, tiny_batches(batch_size=48), epochs=2, callbacks=[Recorder()], progress=False)
    assert events == ["begin", "step1", "step2", "epoch0", "step3", "step4", "epoch1", "end"]
    assert (model[0].weight[~mask] == 0).all()

    class StopAt(Callback):
        def on_step_end(self, state) -> None:
            state.stop = state.step == 3

    history = fit(tiny_model(), tiny_batches(), epochs=5, callbacks=[StopAt()], progress=False)
    assert history.steps == [3]


def test_max_steps_and_schedules() -> None:
    history = fit(tiny_model(), tiny_batches(), epochs=5, max_steps=8, progress=False)
    assert history.steps == [6, 8]
    assert history.lr[-1] < 1e-6  # onecycle annealed over the 8 steps
    cosine = fit(tiny_model(), tiny_batches(), epochs=1, lr=0.2, schedule="cosine", progress=False)
    # History.lr is the rate of the last step taken: step 6 of a 6-step cosine.
    assert cosine.lr[-1] == pytest.approx(0.1 * (1 + math.cos(math.pi * 5 / 6)))
    const = fit(tiny_model(), tiny_batches(), epochs=1, lr=0.2, schedule="constant", optimizer="adamw", progress=False)  # fmt: skip
    assert const.lr == [0.2]
    with pytest.raises(ValueError, match="sgd, adamw"):
        fit(tiny_model(), tiny_batches(), optimizer="lion", progress=False)
    with pytest.raises(ValueError, match="onecycle, cosine, constant"):
        fit(tiny_model(), tiny_batches(), schedule="step", progress=False)
    with pytest.raises(ValueError, match="max_steps"):
        fit(tiny_model(), iter(list(tiny_batches())), progress=False)


def _one_step_loss(**kwargs) -> float:
    """The loss of the first step, with lr=0 so nothing changes."""
    model = tiny_model().eval()  # eval: no dropout/BN noise, so the loss is reproducible here
    model.train = lambda mode=True: model  # keep it in eval mode inside fit
    batches = TensorBatches(*tiny_data(), 96)
    history = fit(
        model, batches, max_steps=1, lr=0.0, schedule="constant", progress=False, **kwargs
    )
    return history.train_loss[0]


def test_distillation_loss_formula() -> None:
    x, y = tiny_data()
    student = tiny_model().eval()
    teacher = tiny_model(seed=5)
    teacher.train()
    with torch.no_grad():
        s, t = student(x), teacher.eval()(x)
    teacher.train()
    T, w = 3.0, 0.3
    kl = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean")
    expected = (1 - w) * F.cross_entropy(s, y) + w * T * T * kl
    got = _one_step_loss(teacher=teacher, distill_temperature=T, distill_weight=w)
    assert got == pytest.approx(float(expected), rel=1e-5)
    assert teacher.training  # its mode is restored
    assert all(p.grad is None for p in teacher.parameters())


def test_label_smoothing_regularizers_and_custom_functions() -> None:
    x, y = tiny_data()
    with torch.no_grad():
        logits = tiny_model().eval()(x)
    assert _one_step_loss() == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    smoothed = float(F.cross_entropy(logits, y, label_smoothing=0.1))
    assert _one_step_loss(label_smoothing=0.1) == pytest.approx(smoothed, rel=1e-5)
    l1 = float(tiny_model()[1].weight.detach().abs().sum())
    reg = _one_step_loss(regularizers=[lambda m: m[1].weight.abs().sum()])
    assert reg == pytest.approx(float(F.cross_entropy(logits, y)) + l1, rel=1e-5)
    custom = _one_step_loss(loss_fn=lambda m, batch: m(batch[0]).pow(2).mean())
    assert custom == pytest.approx(float(logits.pow(2).mean()), rel=1e-5)
    doubled = _one_step_loss(forward_fn=lambda m, inputs: 2 * m(inputs))
    assert doubled == pytest.approx(float(F.cross_entropy(2 * logits, y)), rel=1e-5)


def test_custom_loss_has_no_train_accuracy() -> None:
    history = fit(tiny_model(), tiny_batches(), loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]), progress=False)  # fmt: skip
    assert history.train_acc == [None] and history.to_dict()["train_acc"] == [None]


def test_evaluate() -> None:
    class Fixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.one_hot(x.long(), 3).float() + self.w

    x = torch.tensor([0.0, 1, 2, 0, 1])
    y = torch.tensor([0, 1, 0, 0, 2])
    model = Fixed().train()
    result = evaluate(model, TensorBatches(x, y, 2))
    assert result["accuracy"] == pytest.approx(3 / 5) and result["n"] == 5
    with torch.no_grad():
        assert result["loss"] == pytest.approx(float(F.cross_entropy(model(x), y)))
    assert model.training
    # Token-style targets with padding (-100) are ignored for accuracy.
    tokens = evaluate(model, [(x[None], torch.tensor([[0, 1, -100, -100, 2]]))])
    assert tokens["accuracy"] == pytest.approx(2 / 3) and tokens["n"] == 1
    only_loss = evaluate(model, [(x, y)], loss_fn=lambda m, b: torch.tensor(2.0))
    assert math.isnan(only_loss["accuracy"]) and only_loss["loss"] == 2.0


def test_progress_output(capsys: pytest.CaptureFixture[str]) -> None:
    fit(tiny_model(), tiny_batches(), epochs=2, eval_data=tiny_batches(), progress=False)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    fit(tiny_model(), tiny_batches(), epochs=2, eval_data=tiny_batches(), progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2  loss ") and "eval acc" in lines[1]


def test_exported_graph_modules() -> None:
    x, y = tiny_data()
    model = tiny_model().eval()
    exported = torch.export.export(model, (x[:4],)).module()
    assert evaluate(exported, TensorBatches(x, y, 4))["n"] == 96  # its mode is baked in
    with pytest.raises(TypeError, match="cannot be fine-tuned"):
        fit(exported, TensorBatches(x, y, 32), progress=False)


def test_crash_resumes_from_the_last_periodic_checkpoint(tmp_path: Path) -> None:
    class Crash(Callback):
        def on_step_end(self, state) -> None:
            if state.step == 9:
                raise RuntimeError("power cut")

    kwargs = dict(epochs=2, lr=0.1, progress=False)
    reference = tiny_model()
    fit(reference, tiny_batches(), **kwargs)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(RuntimeError):
        fit(tiny_model(), tiny_batches(), checkpoint=ckpt, checkpoint_every=4, callbacks=[Crash()], **kwargs)  # fmt: skip
    assert load_checkpoint(ckpt)["step"] == 8  # nothing is written on other exceptions
    resumed = tiny_model()
    fit(resumed, tiny_batches(), checkpoint=ckpt, resume=True, **kwargs)
    assert same_weights(resumed, reference)
