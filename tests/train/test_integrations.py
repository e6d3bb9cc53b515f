"""Gradual pruning callbacks for PyTorch Lightning and the Hugging Face Trainer, on tiny models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.unstructured import masks_of, sparsity_report


def regression_data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, x @ torch.randn(8, 2, generator=g)


def test_lightning_callback_reaches_the_sparsity_and_keeps_zeros(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from prunekit.train.lightning import PruningCallback

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))

        def training_step(self, batch, _idx):
            x, y = batch
            return nn.functional.mse_loss(self.body(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    torch.manual_seed(0)
    x, y = regression_data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    net = Net()
    callback = PruningCallback(sparsity=0.75, begin=0, end=12, every=4)
    trainer = pl.Trainer(
        max_steps=20,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        default_root_dir=tmp_path,
    )
    trainer.fit(net, loader)
    assert sparsity_report(net).sparsity == pytest.approx(0.75, abs=0.01)
    masks = masks_of(net)
    assert masks  # the zeros are held by masks ...
    for name, p in net.named_parameters():
        if name in masks:  # ... and stayed zero through 8 more steps of SGD with momentum
            assert torch.all(p[~masks[name]] == 0)
    assert callback.state_dict()["last"] == pytest.approx(0.75)


def test_hugging_face_callback_reaches_the_sparsity_and_keeps_zeros(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from prunekit.train.hf import PruningCallback

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))

        def forward(self, x, labels=None):
            out = self.body(x)
            loss = nn.functional.mse_loss(out, labels) if labels is not None else None
            return {"loss": loss, "logits": out}

    torch.manual_seed(0)
    x, y = regression_data()
    dataset = [{"x": a, "labels": b} for a, b in zip(x, y)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=16,
        per_device_train_batch_size=8,
        learning_rate=0.01,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    net = Net()
    trainer = transformers.Trainer(
        model=net,
        args=args,
        train_dataset=dataset,
        callbacks=[PruningCallback(sparsity=0.5, begin=0, end=8, every=4)],
    )
    trainer.train()
    assert sparsity_report(net).sparsity == pytest.approx(0.5, abs=0.01)
    masks = masks_of(net)
    for name, p in net.named_parameters():
        if name in masks:
            assert torch.all(p[~masks[name]] == 0)


def test_movement_is_refused_by_the_hugging_face_callback():
    pytest.importorskip("transformers")
    from prunekit.train.hf import PruningCallback

    with pytest.raises(ValueError, match="movement"):
        PruningCallback(sparsity=0.5, importance="movement")
