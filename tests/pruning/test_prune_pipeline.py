"""`prune` end to end on the CPU: an official-layout checkpoint, real CIFAR-10 calibration images, outputs that
reload alone, and the bad inputs of the pruning issue."""

import argparse
import json
import random
from pathlib import Path
from statistics import NormalDist

import pytest
import torch
import yaml

import ssmprune_cli
from ssmprune_cli import schemas
from _delta_reference import reference_delta_hat
from ssmprune_cli.data.images import find_images, load_image
from ssmprune_cli.errors import BadInputError, DataError, RecipeError
from ssmprune_cli.io.safetensors_io import save_model
from ssmprune_cli.jobs import PruneRequest, run_prune
from ssmprune_cli.jobs import prune as prune_job
from ssmprune_cli.jobs.prune import calibration_sets
from ssmprune_cli.pruning.schedule import make_points, policy_candidates
from ssmprune_cli.models import create_model
from ssmprune_cli.pruning import recipe as recipes
from ssmprune_cli.pruning.plan import PrunePoint, PruningSpec, dense_macs, schedule_macs
from ssmprune_cli.pruning.pruned_model import PrunedModel


@pytest.fixture(scope="module")
def vim_ckpt(tmp_path_factory) -> Path:
    """A CIFAR-sized Vim (32 px, patch 4: 64 patches + class token) saved as the official release files are."""
    torch.manual_seed(0)
    model = create_model("vim_test", img_size=32, num_classes=10)
    sd = model.state_dict()
    path = tmp_path_factory.mktemp("ckpt") / "vim_cifar.pth"
    torch.save({"model": sd, "model_ema": sd, "epoch": 3, "args": argparse.Namespace(model="vim")}, path)
    return path


def _request(ckpt, out, **kw):
    base = dict(checkpoint=ckpt, out=out, calib_images=24, batch_size=12, seed=0)
    base.update(kw)
    return PruneRequest(**base)


@pytest.mark.parametrize("ratio", [0.3, 0.4])
def test_prune_end_to_end_and_reload(vim_ckpt, cifar_test_dir, tmp_path, ratio):
    out = tmp_path / "out"
    report = run_prune(_request(vim_ckpt, out, ratio=ratio, calib=cifar_test_dir))
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "importance.png", "model.safetensors",
                                                    "recipe.yaml", "report.json", "report.md", "tokens.png"]
    assert report["flops"]["reduction"] >= ratio - 1e-9
    assert json.loads((out / "report.json").read_text())["pruning"] == report["pruning"]
    resolved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert resolved["prune"]["keep"] == [p["keep"] for p in report["pruning"]["points"]]
    model = ssmprune_cli.load(out / "model.safetensors")
    assert isinstance(model, PrunedModel)
    spec = PruningSpec.from_dict(report["pruning"])
    assert spec.delta_fill == "calib"
    dhat = [m.delta_hat for m in model.mixers()]
    assert all(d is not None and torch.all(d > 0) for d in dhat)
    # the reloaded model equals a pruned model rebuilt by hand from the dense checkpoint and the stored Δ̂
    dense = ssmprune_cli.load(vim_ckpt)
    by_hand = PrunedModel(dense, spec)
    by_hand.set_delta_hat(dhat)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), by_hand(x))
    assert schedule_macs(dense, spec.points) <= (1 - ratio) * dense_macs(dense)
    assert not list(tmp_path.glob(".out*"))  # no temporary folders left behind


def test_save_load_forward_bit_identical(vim_ckpt, tmp_path):
    dense = ssmprune_cli.load(vim_ckpt)
    pm = PrunedModel(dense, PruningSpec([PrunePoint("1", 40), PrunePoint("3", 20)], delta_fill="bias"))
    path = save_model(pm.model, tmp_path / "m.safetensors", pruning=pm.spec.to_dict())
    again = ssmprune_cli.load(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(pm(x), again(x))


def test_align_none_differs_and_full_keep_is_dense(vim_ckpt):
    dense = ssmprune_cli.load(vim_ckpt)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = dense(x)
        aligned = PrunedModel(dense, PruningSpec([PrunePoint("2", 30)], delta_fill="bias"))
        a = aligned(x)
        aligned.detach()
        naive = PrunedModel(dense, PruningSpec([PrunePoint("2", 30)], align="none", conv_fill="packed",
                                               delta_fill="zero"))
        n = naive(x)
        naive.detach()
        full = PrunedModel(dense, PruningSpec([PrunePoint("2", 65)], delta_fill="bias"))
        f = full(x)
    assert torch.equal(f, want)
    assert not torch.allclose(a, n)
    assert not torch.allclose(a, want)


def test_explicit_keep_rates_and_counts(vim_ckpt, tmp_path):
    r1 = run_prune(_request(vim_ckpt, tmp_path / "a", keep=[0.5, 0.5], at=["1", "2"], delta_fill="bias"))
    assert [p["keep"] for p in r1["pruning"]["points"]] == [33, 17]
    r2 = run_prune(_request(vim_ckpt, tmp_path / "b", keep=[40, 20], at=["1", "2"], delta_fill="bias"))
    assert [p["keep"] for p in r2["pruning"]["points"]] == [40, 20]
    assert r2["calibration"]["images"] == 0


def test_bad_inputs_leave_nothing(vim_ckpt, cifar_test_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(BadInputError, match="already exists"):
        run_prune(_request(vim_ckpt, out, ratio=0.3, calib=cifar_test_dir))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(RecipeError, match=r"\(0, 1\)"):
        run_prune(_request(vim_ckpt, tmp_path / "o1", ratio=1.5, delta_fill="bias"))
    with pytest.raises(RecipeError, match="unreachable"):
        run_prune(_request(vim_ckpt, tmp_path / "o2", ratio=0.95, at=["3"], delta_fill="bias"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("prune:\n  ratoi: 0.3\n")
    with pytest.raises(RecipeError, match="unknown field 'prune.ratoi'"):
        run_prune(_request(vim_ckpt, tmp_path / "o3", recipe=bad, delta_fill="bias"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images"):
        run_prune(_request(vim_ckpt, tmp_path / "o4", ratio=0.3, calib=empty))
    with pytest.raises(DataError, match="--calib"):
        run_prune(_request(vim_ckpt, tmp_path / "o5", ratio=0.3))
    with pytest.raises(BadInputError, match="overwrite the input|inside the output"):
        run_prune(_request(vim_ckpt, vim_ckpt.parent, ratio=0.3, delta_fill="bias", force=True))
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["bad.yaml", "empty", "out"]
    assert vim_ckpt.exists()


def test_auto_grid_has_the_default_first_and_one_budget(vim_ckpt):
    dense = ssmprune_cli.load(vim_ckpt)
    prune = {"ratio": 0.4, "at": ["1", "2"], "split": "uniform"}
    spec = PruningSpec(make_points(dense, prune), conv_fill="hold", delta_fill="calib")
    cands = policy_candidates(dense, spec, prune, recipes.DEFAULTS["auto"])
    assert len(cands) == 3 * 3 * 3  # hold/zero/packed x calib/bias/zero x uniform/early/late, each once
    assert len({(c["conv_fill"], c["delta_fill"], c["split"]) for c in cands}) == 27
    assert (cands[0]["conv_fill"], cands[0]["delta_fill"], cands[0]["split"]) == ("hold", "calib", "uniform")
    assert all(c["macs"] <= 0.6 * dense_macs(dense) for c in cands)
    # a default outside the grid still comes first and is what the others must beat
    odd = policy_candidates(dense, spec, prune, {"conv_fill": ["zero"], "delta_fill": ["bias"], "split": ["late"]})
    assert [(c["conv_fill"], c["delta_fill"], c["split"]) for c in odd] == [("hold", "calib", "uniform"),
                                                                             ("zero", "bias", "late")]


def test_calibration_and_held_out_images_are_disjoint_and_both_sensible(cifar_test_dir):
    """12 calibration images of 120: Δ̂ from 12 images, the held-out set from the other 108 (it used to take
    its 128 first and leave Δ̂ one image)."""
    cal, hold = calibration_sets(cifar_test_dir, 12, 128, seed=0)
    assert len(cal) == 12 and len(hold) == 108 and not set(cal.paths) & set(hold.paths)
    assert cal.paths == find_images(cifar_test_dir, limit=12, seed=0).paths  # the documented seeded subset
    cal, hold = calibration_sets(cifar_test_dir, 24, 40, seed=5)
    assert len(cal) == 24 and len(hold) == 40 and not set(cal.paths) & set(hold.paths)
    assert calibration_sets(cifar_test_dir, 24, 0, seed=5) == (cal, None)
    with pytest.raises(DataError, match=r"at least 32 held-out images besides the 100 calibration images.*"
                                        r"--calib-images 88 or fewer"):
        calibration_sets(cifar_test_dir, 100, 128, seed=0)
    with pytest.raises(RecipeError, match="calib.holdout is 8"):
        calibration_sets(cifar_test_dir, 12, 8, seed=0)


def test_auto_scores_match_an_independent_measurement(cifar_test_dir, tmp_path, monkeypatch):
    """Every candidate's KL to the dense model (± SE) as measured here: Δ̂ from the 12 calibration images by the
    test's own scan hook, each candidate rebuilt from the dense checkpoint, KL computed by hand on the 48
    held-out images that follow them in the seeded shuffle; the choice follows the paired rule from those
    numbers, and the report says what it did. (A 16 px vim_test: CIFAR images take the resize + crop path.)"""
    torch.manual_seed(0)
    ckpt = save_model(create_model("vim_test", num_classes=10), tmp_path / "vim16.safetensors")
    recipe = tmp_path / "grid.yaml"
    recipe.write_text("calib:\n  holdout: 48\nauto:\n  conv_fill: [zero, hold]\n  delta_fill: [zero, calib]\n"
                      "  split: [uniform]\n")
    out = tmp_path / "auto"
    report = run_prune(_request(ckpt, out, ratio=0.4, calib=cifar_test_dir, auto=True, calib_images=12,
                                recipe=recipe))
    a = report["auto"]
    assert schemas.first_problem(report, schemas.load_schema("report")) is None  # with the --auto section
    assert report["calibration"]["images"] == 12 and report["calibration"]["holdout_images"] == 48
    assert [(c["conv_fill"], c["delta_fill"]) for c in a["candidates"]] == [
        ("hold", "calib"), ("zero", "zero"), ("zero", "calib"), ("hold", "zero")]
    dense = ssmprune_cli.load(ckpt)
    size, mean, std = (16, 16), *dense.normalization()
    everything = find_images(cifar_test_dir).paths
    order = list(range(len(everything)))
    random.Random(0).shuffle(order)  # the documented split: one shuffle seeded by --seed, 12 then 48
    cal, hold = sorted(everything[i] for i in order[:12]), sorted(everything[i] for i in order[12:60])
    assert cal == find_images(cifar_test_dir, limit=12, seed=0).paths
    x_cal = torch.stack([load_image(p, size, mean, std) for p in cal])
    x_hold = torch.stack([load_image(p, size, mean, std) for p in hold])
    dhat = reference_delta_hat(dense, [x_cal], monkeypatch)
    with torch.no_grad():
        p_log = torch.log_softmax(dense(x_hold).double(), -1)
    kls = []
    for c in a["candidates"]:
        points = [PrunePoint(pt.site, k) for pt, k in zip(PruningSpec.from_dict(report["pruning"]).points,
                                                          c["keep"])]
        pm = PrunedModel(dense, PruningSpec(points, conv_fill=c["conv_fill"], delta_fill=c["delta_fill"]))
        if c["delta_fill"] == "calib":
            pm.set_delta_hat([d.float() for d in dhat])
        with torch.no_grad():
            q_log = torch.log_softmax(pm(x_hold).double(), -1)
        pm.detach()
        kl = (p_log.exp() * (p_log - q_log)).sum(-1)
        kls.append(kl)
        n = len(kl)
        assert c["kl"] == pytest.approx(float(kl.mean()), rel=1e-4, abs=1e-7)
        assert c["kl_se"] == pytest.approx(float(kl.std()) / n ** 0.5, rel=1e-3, abs=1e-7)
        agree = (q_log.argmax(-1) == p_log.argmax(-1)).double()
        assert c["agreement"] == pytest.approx(float(agree.mean()))
    z = NormalDist().inv_cdf(1 - 0.05 / 3)
    beats = [i for i in range(1, 4)
             if float((kls[i] - kls[0]).mean()) + z * float((kls[i] - kls[0]).std()) / 48 ** 0.5 < 0]
    want = min(beats, key=lambda i: float(kls[i].mean())) if beats else 0
    assert a["chosen"] == a["candidates"][want] and a["kept_default"] == (not beats)
    assert report["pruning"]["conv_fill"] == a["chosen"]["conv_fill"]
    assert report["calibration"]["agreement_with_dense"] == a["chosen"]["agreement"]
    md = (out / "report.md").read_text()
    assert "Policy search" in md and "± " in md and a["decision"] in md
    assert ("for lack of evidence" in a["decision"]) == a["kept_default"]


@pytest.mark.parametrize("name, wrap, at", [("plainmamba_test", "state_dict", ["1", "2"]),
                                            ("groupmamba_test", None, ["1.1", "2.1"])])
def test_prune_other_families_end_to_end(name, wrap, at, cifar_test_dir, tmp_path, monkeypatch):
    """Official layouts of the 2-D families (PlainMamba's mmcv {'state_dict'} with `backbone.`/`head.fc.`
    keys; GroupMamba's bare EMA dict), real calibration images; the written model reloads alone and gives the
    in-memory pruned model's logits, and its Δ̂ is the mean Δ over the calibration images measured here."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    sd = model.state_dict()
    if name.startswith("plainmamba"):
        sd = {("head.fc." + k[5:]) if k.startswith("head.") else "backbone." + k: v for k, v in sd.items()}
    path = tmp_path / f"{name}.pth"
    torch.save({wrap: sd} if wrap else sd, path)
    out = tmp_path / "out"
    in_memory = {}
    write = prune_job.write_outputs

    def keep_pruned(out, req, loaded, pruned, *args, **kw):
        in_memory["model"] = pruned
        return write(out, req, loaded, pruned, *args, **kw)

    monkeypatch.setattr(prune_job, "write_outputs", keep_pruned)
    report = run_prune(_request(path, out, keep=[0.6, 0.6], at=at, calib=cifar_test_dir, calib_images=12))
    assert report["source"]["family"] == name.split("_")[0]
    assert report["flops"]["reduction"] > 0
    again = ssmprune_cli.load(out / "model.safetensors")
    assert isinstance(again, PrunedModel) and again.spec.conv_fill == "hold"
    assert again.spec == in_memory["model"].spec and again.spec.delta_fill == "calib"
    size, mean, std = again.input_size()[1:], *again.normalization()
    x = torch.stack([load_image(p, size, mean, std) for p in find_images(cifar_test_dir).paths[::12]])
    with torch.no_grad():
        y = again(x)
        assert y.shape == (10, 10) and torch.equal(y, in_memory["model"](x))
    # Δ̂: the dense model's mean Δ over the 12 calibration images (the seeded subset), by the test's own hook
    cal = find_images(cifar_test_dir, limit=12, seed=0).paths
    dense = ssmprune_cli.load(path)
    want = reference_delta_hat(dense, [torch.stack([load_image(p, size, mean, std) for p in cal])], monkeypatch)
    for m, w in zip(again.mixers(), want, strict=True):
        torch.testing.assert_close(m.delta_hat.double(), w, rtol=1e-5, atol=1e-8)
