"""--auto's scores and its rule, on logits where the right answer is known, against statistics computed here."""

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from ssmprune_cli.pruning.policy import decide, z_threshold


def _kl_by_hand(dense, cand):
    p = np.exp(dense - dense.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = np.exp(cand - cand.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    return (p * (np.log(p) - np.log(q))).sum(1)


def _mean_se(x):
    return float(np.mean(x)), float(np.std(x, ddof=1) / math.sqrt(len(x)))


def _logits(n, noise, seed):
    g = torch.Generator().manual_seed(seed)
    dense = 3 * torch.randn(n, 10, generator=g, dtype=torch.float64)
    return dense, [dense + s * torch.randn(n, 10, generator=g, dtype=torch.float64) for s in noise]


def test_scores_are_mean_kl_and_agreement_with_standard_errors():
    dense, cands = _logits(50, [1.0, 0.5, 2.0], seed=0)
    d = decide(dense, cands)
    kls = [_kl_by_hand(dense.numpy(), c.numpy()) for c in cands]
    for i, (sc, kl, c) in enumerate(zip(d.scores, kls, cands)):
        assert (sc.kl, sc.kl_se) == pytest.approx(_mean_se(kl), rel=1e-9)
        agree = (c.argmax(1) == dense.argmax(1)).numpy().astype(float)
        assert (sc.agreement, sc.agreement_se) == pytest.approx(_mean_se(agree), rel=1e-9)
        if i:
            assert (sc.diff, sc.diff_se) == pytest.approx(_mean_se(kl - kls[0]), rel=1e-9)
    assert d.scores[0].diff == 0 and not d.scores[0].better


def test_a_clearly_better_candidate_replaces_the_default():
    # default: noise 1.0; a candidate with a quarter of the noise is far closer to the dense model
    dense, cands = _logits(200, [1.0, 1.0, 0.25, 0.5], seed=1)
    d = decide(dense, cands)
    assert not d.kept_default and d.chosen == 2
    assert [s.better for s in d.scores] == [False, False, True, True]  # two beat it; the closer one wins
    assert d.z == pytest.approx(NormalDist().inv_cdf(1 - 0.05 / 3))


def test_a_difference_within_the_noise_keeps_the_default():
    """The candidate's mean KL is lower (a plain max would take it), but not beyond its paired noise."""
    dense, cands = _logits(40, [1.0, 0.97], seed=2)
    kls = [_kl_by_hand(dense.numpy(), c.numpy()) for c in cands]
    diff, se = _mean_se(kls[1] - kls[0])
    assert diff < 0 and diff + 1.6449 * se > 0  # lower on this sample, within 1.64 standard errors
    d = decide(dense, cands)
    assert d.kept_default and d.chosen == 0 and not d.scores[1].better


def test_identical_candidates_never_replace_the_default():
    dense, cands = _logits(64, [0.8], seed=3)
    d = decide(dense, [cands[0], cands[0].clone(), cands[0].clone()])
    assert d.kept_default and all(s.diff == 0 and not s.better for s in d.scores)


def test_threshold_is_bonferroni_over_the_alternatives():
    assert z_threshold(1) == pytest.approx(1.6448536, rel=1e-6)   # one-sided 5 %
    z26 = z_threshold(26)                                          # the built-in 3 x 3 x 3 grid
    assert 2.85 < z26 < 2.95 and NormalDist().cdf(z26) == pytest.approx(1 - 0.05 / 26)
