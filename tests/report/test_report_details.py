"""Details of what reports show people: throughput spread in img/s, prune points named as the report names
them, pictures that sample every class, models called pruned and dense."""

import numpy as np
import pytest

from ssmprune_cli.data.images import ImageSet, across_classes, find_images
from ssmprune_cli.models import create_model
from ssmprune_cli.pruning.plan import PrunePoint, PruningSpec, tokens_per_block
from ssmprune_cli.pruning.pruned_model import PrunedModel
from ssmprune_cli.report.bench import Timing, display_names, throughput_cell
from ssmprune_cli.report.pictures import PRUNE_MARK, prune_marks, tokens_figure


def test_throughput_iqr_is_in_images_per_second():
    t = Timing(batch=10, seconds=[0.1, 0.2, 0.3, 0.4]).to_dict()
    q1, q3 = 0.175, 0.325  # inclusive quartiles of the times
    assert t["images_per_s"] == pytest.approx(10 / 0.25)
    assert t["iqr_images_per_s"] == pytest.approx(10 / q1 - 10 / q3)
    assert throughput_cell(t) == f"{10 / 0.25:.1f} [{10 / q1 - 10 / q3:.1f}]"
    old = {k: v for k, v in t.items() if k != "iqr_images_per_s"}  # results written before: same cell
    assert throughput_cell(old) == throughput_cell(t)


def test_models_are_called_pruned_and_dense_where_they_are():
    dense = create_model("vim_test")
    pruned = PrunedModel(create_model("vim_test"), PruningSpec([PrunePoint("2", 9)], delta_fill="bias"))
    assert display_names({"model": pruned, "baseline": dense}) == {"model": "pruned", "baseline": "dense"}
    assert display_names({"model": dense, "baseline": create_model("vim_test")}) == \
        {"model": "model", "baseline": "baseline"}
    assert display_names({"model": dense}) == {"model": "dense"}


def _rows(model, points):
    sites = model.prune_sites()
    return [{"block": i + 1, "site": s, "dense": d, "pruned": k} for i, (s, d, k) in
            enumerate(zip(sites, tokens_per_block(model, []), tokens_per_block(model, points)))]


def test_prune_points_are_circled_after_their_block_and_labelled_with_their_names():
    model = create_model("vim_test")
    points = [PrunePoint("1", 13), PrunePoint("3", 9)]
    rows = _rows(model, points)
    marks = prune_marks(rows, [p.site for p in points])
    assert [label for _, label in marks] == ["1", "3"]
    assert [rows[i]["site"] for i, _ in marks] == ["1", "3"]  # the named block, not the one after it
    assert all(rows[i + 1]["pruned"] < rows[i]["pruned"] for i, _ in marks)
    assert prune_marks(rows) == marks  # found from the counts alone, the same names
    fig = np.asarray(tokens_figure(rows, "t", (400, 200), [p.site for p in points]))
    red = np.all(fig == PRUNE_MARK, axis=-1)
    assert red.sum() > 50  # circles and labels drawn in the mark's colour


def test_pictures_sample_across_classes(cifar_test_dir):
    images = find_images(cifar_test_dir)
    picked = across_classes(images, 4)
    assert len(picked) == 4 and len(set(picked.labels)) == 4
    assert picked.labels != [0, 0, 0, 0]
    spread = sorted(picked.labels)
    assert spread[-1] - spread[0] >= 5  # spread over the class list, not its first four
    many = across_classes(images, 15)  # more than the 10 classes: a second image from some
    assert len(many) == 15 and len(set(many.labels)) == 10
    flat = across_classes(ImageSet(images.paths[:12], [-1] * 12, []), 3)
    assert len(flat) == 3 and flat.paths == [images.paths[0], images.paths[4], images.paths[8]]
