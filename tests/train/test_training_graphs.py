"""Graphed training forwards (train/graphs.py) hand the model back: capture and replay need a GPU, so
`torch.cuda.make_graphed_callables` is replaced here by a stand-in that patches `model.forward` as the real one does;
what is tested is that a second capture goes through the model's own forward (not the first graph's replay, which
fails inside a capture) and that release() restores it."""

import torch
from torch import nn

from ssmprune_cli.train import graphs


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x)


def test_capture_twice_then_release(monkeypatch):
    captured_through = []

    def fake_make_graphed_callables(module, sample_args, num_warmup_iters=3):
        captured_through.append(module.__dict__.get("forward"))  # None: the class's own forward
        replay = lambda *a: module.lin(*a) * 0 + 7.0  # noqa: E731  what a replay returns, recognisably
        module.forward = replay
        return module

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", fake_make_graphed_callables)
    model = Tiny()
    x = torch.randn(4, 3)
    first = graphs.GraphedTraining(model, x, bf16=False)
    assert first.ok and torch.equal(first(x), torch.full((4, 2), 7.0))
    second = graphs.GraphedTraining(model, x, bf16=False)  # the next train() call on the same model
    assert second.ok and captured_through == [None, None]
    assert not torch.equal(second(x[:2]), torch.full((2, 2), 7.0))  # another batch shape: eager
    second.release()
    assert "forward" not in model.__dict__ and not second.ok
    torch.testing.assert_close(model(x), model.lin(x))
