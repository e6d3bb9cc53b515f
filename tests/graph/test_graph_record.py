"""The fast capture (ops recorded on meta tensors) against torch.export, the reference."""

from pathlib import Path

import pytest
import torch
from torch import fx, nn

import prunekit as pk
from prunekit.graph.capture import capture
from prunekit.graph.record import BATCH_TAG, RecordedProgram, RecordingError


def _signature(graph):
    return sorted(
        (g.key, g.size, tuple(sorted((m.name, m.dim) for m in g.members))) for g in graph.groups
    )


def _run(program, args, kwargs=None):
    flat = program._graph_module_flat_inputs(args, kwargs or {})
    with torch.no_grad():
        return fx.Interpreter(program.graph_module).run(*flat, enable_io_processing=False)


def test_recorded_groups_match_export(zoo, zoo_name):
    model, x = zoo(zoo_name)
    recorded = pk.trace(model, x, capture="record")
    exported = pk.trace(model, x, capture="export")
    assert isinstance(recorded.exported, RecordedProgram)
    assert _signature(recorded) == _signature(exported)
    assert [b.op for b in recorded.blocked_ops] == [b.op for b in exported.blocked_ops]


@pytest.mark.parametrize("batch", [2, 5])
def test_recorded_graph_runs_at_any_batch(zoo, zoo_name, batch):
    model, (x,) = zoo(zoo_name)
    program, _, _ = capture(model, (x,), method="record")
    x = torch.randn(batch, *x.shape[1:]) if x.is_floating_point() else x.repeat(3, 1)[:batch]
    with torch.no_grad():
        expected = model(x)
    expected = expected[0] if isinstance(expected, tuple) else expected
    got = _run(program, (x,))[0]
    torch.testing.assert_close(got, expected)


class _Factories(nn.Module):
    """Tensors made inside forward: factories, a literal constant, a plain tensor attribute."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.offset = torch.tensor([0.5, -1.0, 2.0])  # neither parameter nor buffer

    def forward(self, x):
        zeros = torch.zeros(x.shape[0], 3, device=x.device)
        steps = torch.arange(3, device=x.device)
        return self.fc(x) + zeros + steps + torch.tensor([1.0, 2.0, 3.0]) + self.offset


def test_factories_and_constants_are_recorded():
    model, x = _Factories().eval(), torch.randn(4, 3)
    program, _, _ = capture(model, (x,), method="record")
    assert program.constants  # the literal and the attribute became constant inputs
    torch.testing.assert_close(_run(program, (x,))[0], model(x))


def test_batch_sizes_become_symbolic():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    program, args, _ = capture(model, torch.randn(1, 3, 8, 8), method="record")
    assert args[0].shape[0] == 2  # widened like an export with a dynamic batch
    sizes = [n for n in program.graph.nodes if n.target is torch.ops.aten.sym_size.int]
    literals = [a for n in program.graph.nodes for a in n.args if isinstance(a, int)]
    assert all(a % BATCH_TAG for a in literals if a)  # no batch-sized literal left
    assert sizes or all(n.target is not torch.ops.aten.view.default for n in program.graph.nodes)


class _CountsCalls(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls.add_(1)  # an in-place update of model state
        return self.fc(x)


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x)[: int(x.abs().sum().item()) % 2 + 1]


@pytest.mark.parametrize("cls", [_CountsCalls, _DataDependent])
def test_recording_refuses_what_it_cannot_represent(cls):
    with pytest.raises(RecordingError):
        capture(cls().eval(), (torch.randn(2, 4),), method="record")


def test_auto_capture_falls_back_to_export():
    program, _, _ = capture(_CountsCalls().eval(), (torch.randn(2, 4),))
    assert isinstance(program, torch.export.ExportedProgram)


def test_recording_leaves_the_model_untouched(zoo):
    model, x = zoo("squeeze_excite")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    capture(model, x, method="record")
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].device.type == "cpu" for k in before)


def test_unknown_capture_method_is_refused(zoo):
    model, x = zoo("seq_cnn")
    with pytest.raises(ValueError, match="capture must be one of"):
        pk.trace(model, x, capture="jit")


def test_recorded_ops_name_the_model_source_line():
    """Like an export, a recorded op carries the file and line of the model code that called
    it (not torch's nn.Linear, not prunekit's recorder)."""
    model, x = _Factories().eval(), torch.randn(4, 3)
    program, _, _ = capture(model, (x,), method="record")
    traces = [n.meta.get("stack_trace", "") for n in program.graph_module.graph.nodes]
    line = _Factories.forward.__code__.co_firstlineno + 1  # the `zeros = ...` line
    assert any(t.endswith(f'"{__file__}", line {line}, in forward') for t in traces)
    linear = [n for n in program.graph_module.graph.nodes if "linear" in str(n.target)]
    assert linear and f'"{__file__}"' in linear[0].meta["stack_trace"]


def test_library_files_are_told_from_model_code():
    from prunekit._source import is_library_file

    torch_dir = Path(torch.__file__).parent
    assert is_library_file(str(torch_dir / "nn" / "modules" / "linear.py"))
    assert is_library_file(pk.__file__)
    # a sibling package whose name starts with "torch" is model code
    assert not is_library_file(str(torch_dir.parent / "torchvision" / "models" / "swin.py"))
    assert not is_library_file(__file__)
