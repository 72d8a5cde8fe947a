"""PrunedModel's hook against the hand-written hooks of the family tests: same tokens kept → same logits, including
GroupMamba's refill when two prune points fall in one stage."""

import sys
from pathlib import Path

import torch

from ssmprune_cli.models import create_model
from ssmprune_cli.pruning.plan import PrunePoint, PruningSpec
from ssmprune_cli.pruning.pruned_model import PrunedModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from test_groupmamba import make_hook  # noqa: E402  (the family test's independent pruning hook)


def test_groupmamba_two_points_in_one_stage_refill_like_the_family_test():
    torch.manual_seed(0)
    model = create_model("groupmamba_test").double().eval()
    spec = PruningSpec([PrunePoint("1.1", 40), PrunePoint("1.2", 20), PrunePoint("2.1", 9)], delta_fill="bias")
    pm = PrunedModel(model, spec)
    kept = {}
    original = pm.prune_hook

    def recording(site, tensors, layout):
        tensors, new = original(site, tensors, layout)
        if new is not None and new is not layout:
            kept[site] = new.keep.clone()
        return tensors, new

    pm.prune_hook = recording
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        ours = pm.model(x, hook=pm.prune_hook)
        pm.detach()
        theirs = model(x, hook=make_hook(model, kept, "hold", "bias"))
    assert sorted(kept) == ["1.1", "1.2", "2.1"] and kept["1.2"].shape == (2, 20)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
