import pytest
import torch

from ssmprune_cli.pruning.importance import SCORES, select_tokens, token_scores


def test_scores_match_float64_definitions():
    o = torch.randn(3, 11, 7, dtype=torch.float64)
    ref = {
        "clip": torch.where(o > 0, o, torch.zeros_like(o)).sum(-1),
        "l1": o.abs().sum(-1),
        "l2": (o * o).sum(-1).sqrt(),
        "noclip": o.sum(-1),
    }
    for name, want in ref.items():
        torch.testing.assert_close(token_scores(name, o), want, rtol=0, atol=1e-12)
    # clip differs from noclip whenever some channel is negative
    assert not torch.allclose(token_scores("clip", o), token_scores("noclip", o))


def test_random_is_seeded():
    o = torch.randn(2, 9, 4)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(token_scores("random", o, g()), token_scores("random", o, g()))
    assert not torch.equal(token_scores("random", o, g()), token_scores("random", o, torch.Generator().manual_seed(6)))


def test_select_keeps_protected_and_order():
    scores = torch.randn(4, 20)
    protected = torch.full((4, 1), 10)
    scores[:, 10] = -1e9  # lowest score, still kept
    idx = select_tokens(scores, 6, protected)
    assert idx.shape == (4, 6)
    assert (idx == 10).any(dim=1).all()
    assert torch.all(idx[:, 1:] > idx[:, :-1])
    for b in range(4):
        others = [i for i in idx[b].tolist() if i != 10]
        assert sorted(others) == sorted(scores[b].argsort(descending=True).tolist()[:5])


def test_unknown_score():
    with pytest.raises(ValueError, match="unknown score"):
        token_scores("max", torch.zeros(1, 2, 3))
    assert set(SCORES) == {"clip", "l1", "l2", "noclip", "random", "mtr"}
