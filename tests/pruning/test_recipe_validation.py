"""Recipe values are checked where they are read, down to list items and ranges, so a bad value is one line
naming its field rather than a TypeError from the planner (tests/fuzz/test_fuzz_recipes.py fuzzes the rest)."""

import re

import pytest

from ssmprune_cli.errors import RecipeError
from ssmprune_cli.models import create_model
from ssmprune_cli.pruning import recipe as recipes
from ssmprune_cli.pruning.schedule import plan_from_recipe


@pytest.mark.parametrize("text, words", [
    ("prune:\n  keep: [half]\n", re.escape("'prune.keep[0]' must be a number, got 'half'")),
    ("prune:\n  keep: [.nan]\n", re.escape("'prune.keep[0]' must be > 0, got nan")),
    ("prune:\n  at_fraction: [null]\n", re.escape("'prune.at_fraction[0]' must be a number, got None")),
    ("prune:\n  at: [true]\n", re.escape("'prune.at[0]' must be a string or an integer, got True")),
    ("prune:\n  ratio: .inf\n", re.escape("'prune.ratio' must be in (0, 1), got inf")),
    ("prune:\n  stage: [1, x]\n", re.escape("'prune.stage[1]' must be an integer, got 'x'")),
    ("auto:\n  conv_fill: [1]\n", re.escape("unknown conv_fill 1 ('auto.conv_fill[0]')")),
    ("calib:\n  batch_size: 0\n", re.escape("'calib.batch_size' must be >= 1, got 0")),
    ("calib:\n  images: -5\n", re.escape("'calib.images' must be >= 1, got -5")),
    ("seed: -1\n", re.escape("'seed' must be in [0, 9223372036854775807], got -1")),
    (b"prune:\n  note: \xff\n", "not UTF-8 text"),
    ("[" * 5000, "not valid YAML|nests too deeply"),
])
def test_bad_values_are_refused_naming_the_field(tmp_path, text, words):
    path = tmp_path / "r.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(RecipeError, match=words):
        recipes.read_recipe(path)


def test_good_values_plan(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("seed: 3\nprune:\n  at: [2, \"3\"]\n  keep: [0.5, 6]\ncalib:\n  batch_size: 1\n")
    with pytest.raises(RecipeError, match="either all rates"):  # mixing rates and counts is still refused
        plan_from_recipe(create_model("vim_test"), recipes.resolve(None, "vim", path))
    path.write_text("seed: 3\nprune:\n  at: [2, \"3\"]\n  keep: [0.5, 0.5]\n  ratio: null\n")
    recipe = recipes.resolve(None, "vim", path)
    recipe["prune"].pop("ratio", None)
    spec = plan_from_recipe(create_model("vim_test"), recipe)
    assert [p.site for p in spec.points] == ["2", "3"] and spec.seed == 3
