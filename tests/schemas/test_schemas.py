"""The published JSON Schemas (ssmprune_cli/schemas, docs/schemas/) and the validator that checks them: recipes
are validated against recipe.schema.json when they load (one line naming the field), the schemas' name lists are
the code's, and a standard validator (jsonschema, where installed) reads them the same way."""

import json
from pathlib import Path

import pytest

from ssmprune_cli import schemas
from ssmprune_cli.errors import RecipeError
from ssmprune_cli.models.layers.token_layout import CONV_FILLS, DELTA_FILLS
from ssmprune_cli.pruning import recipe as recipes
from ssmprune_cli.pruning.importance import SCORES
from ssmprune_cli.pruning.methods import METHODS, OPTIONS
from ssmprune_cli.pruning.plan import ALIGNS, MERGE_LAYERS, SPLITS

ROOT = Path(__file__).resolve().parents[2]
RECIPE = schemas.load_schema("recipe")
REPORT = schemas.load_schema("report")



# ------------------------------------------------------------------------------------------------ the validator
TOY = {
    "type": "object", "additionalProperties": False, "required": ["n"],
    "properties": {
        "n": {"type": "integer", "minimum": 1},
        "r": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "kind": {"enum": ["a", "b"]},
        "tags": {"type": "array", "minItems": 1, "items": {"type": ["string", "integer"]}},
        "maybe": {"type": ["string", "null"]},
        "sub": {"$ref": "#/$defs/sub"},
        "free": {"type": "object", "additionalProperties": {"type": "number"}},
    },
    "$defs": {"sub": {"type": "object", "properties": {"on": {"type": "boolean"}}}},
}


@pytest.mark.parametrize("doc, problem", [
    ({"n": 2, "r": 0.5, "kind": "a", "tags": ["x", 3], "maybe": None, "sub": {"on": True}, "free": {"k": 1.5}},
     None),
    ({"n": 2.0}, None),  # JSON Schema: an integral float is an integer
    ([], "the document must be a mapping, got []"),
    ({}, "missing field 'n'"),
    ({"n": True}, "'n' must be an integer, got True"),
    ({"n": 1.5}, "'n' must be an integer, got 1.5"),
    ({"n": 0}, "'n' must be >= 1, got 0"),
    ({"n": 1, "r": 1}, "'r' must be in (0, 1), got 1"),
    ({"n": 1, "r": "half"}, "'r' must be a number, got 'half'"),
    ({"n": 1, "kind": "c"}, "unknown kind 'c' ('kind'); choose one of a, b"),
    ({"n": 1, "tags": []}, "'tags' must have at least 1 item(s)"),
    ({"n": 1, "tags": ["x", 2.5]}, "'tags[1]' must be a string or an integer, got 2.5"),
    ({"n": 1, "sub": {"on": "yes"}}, "'sub.on' must be true or false, got 'yes'"),
    ({"n": 1, "free": {"k": "x"}}, "'free.k' must be a number, got 'x'"),
    ({"n": 1, "extra": 1}, "unknown field 'extra' (known: free, kind, maybe, n, r, sub, tags)"),
])
def test_validator_names_the_first_bad_field(doc, problem):
    assert schemas.first_problem(doc, TOY) == problem


def test_every_problem_is_listed_in_document_order():
    assert list(schemas.problems({"n": 0, "kind": "z", "sub": []}, TOY)) == [
        "'n' must be >= 1, got 0", "unknown kind 'z' ('kind'); choose one of a, b",
        "'sub' must be a mapping, got []"]


def test_a_keyword_outside_the_subset_is_refused_not_ignored():
    with pytest.raises(ValueError, match="pattern .* outside the subset"):
        schemas.first_problem("x", {"type": "string", "pattern": "^a"})
    with pytest.raises(ValueError, match="oneOf at #/properties/a"):
        schemas.check_schema({"properties": {"a": {"oneOf": []}}})
    with pytest.raises(ValueError, match="unsupported \\$ref"):
        schemas.first_problem(1, {"$ref": "other.json#/x"})


# ------------------------------------------------------------------------------------------------ the schemas
def test_published_copies_are_the_package_schemas():
    for name in schemas.NAMES:
        assert (ROOT / "docs" / "schemas" / schemas.filename(name)).read_text() == schemas.schema_text(name)


def test_schema_name_lists_are_the_codes():
    prune = RECIPE["properties"]["prune"]["properties"]
    assert prune["score"]["enum"] == list(SCORES)
    assert prune["method"]["enum"] == list(METHODS)
    assert prune["align"]["enum"] == list(ALIGNS)
    assert prune["conv_fill"]["enum"] == list(CONV_FILLS)
    assert prune["delta_fill"]["enum"] == list(DELTA_FILLS)
    assert prune["split"]["enum"] == list(SPLITS)
    assert prune["merge"]["properties"]["layers"]["enum"] == list(MERGE_LAYERS)
    assert prune["merge"]["properties"]["weighting"]["enum"] == list(OPTIONS["merge"]["weighting"][1])
    assert prune["fuse"]["properties"]["at"]["enum"] == list(OPTIONS["fuse"]["at"][1])
    assert set(prune["merge"]["properties"]) == {"layers", "boundary"} | set(OPTIONS["merge"])
    auto = RECIPE["properties"]["auto"]["properties"]
    assert auto["conv_fill"]["items"]["enum"] == list(CONV_FILLS)
    assert auto["delta_fill"]["items"]["enum"] == list(DELTA_FILLS)
    assert auto["split"]["items"]["enum"] == list(SPLITS)
    spec = REPORT["$defs"]["spec"]["properties"]
    for field in ("score", "method", "align", "conv_fill", "delta_fill"):
        assert spec[field]["enum"] == prune[field]["enum"], field


def test_recipe_defaults_come_from_the_schema():
    assert recipes.DEFAULTS == schemas.defaults(RECIPE)
    assert recipes.DEFAULTS["calib"] == {"images": 256, "batch_size": 32, "holdout": 128}
    assert recipes.DEFAULTS["prune"] == {"split": "uniform", "score": "clip", "align": "aligned"}


def test_built_in_and_example_recipes_are_valid():
    import yaml
    from importlib import resources

    files = [f for f in (resources.files("ssmprune_cli") / "recipes").iterdir() if f.name.endswith(".yaml")]
    files += sorted((ROOT / "examples").rglob("*.yaml"))
    files = [f for f in files if "ci" not in Path(str(f)).parts]  # the CI workflow is no recipe
    assert len(files) >= 7
    for f in files:
        assert schemas.first_problem(yaml.safe_load(f.read_text()), RECIPE) is None, f.name


# ------------------------------------------------------------------------------------------------ recipes load
@pytest.mark.parametrize("text, message", [
    ("prune:\n  ratio: 1.5\n", "'prune.ratio' must be in (0, 1), got 1.5"),
    ("prune:\n  score: attention\n", "unknown score 'attention' ('prune.score'); choose one of clip, l1"),
    ("prune:\n  ratoi: 0.3\n", "unknown field 'prune.ratoi' (known: align, at, at_fraction"),
    ("calib:\n  images: many\n", "'calib.images' must be an integer, got 'many'"),
    ("prune:\n  keep: [0.5, 0]\n", "'prune.keep[1]' must be > 0, got 0"),
    ("auto:\n  conv_fill: [hold, sideways]\n", "unknown conv_fill 'sideways' ('auto.conv_fill[1]')"),
    ("- a list\n", "the document must be a mapping"),
])
def test_a_bad_recipe_is_one_line_naming_the_field(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        recipes.read_recipe(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_null_fields_mean_not_set(tmp_path):
    path = tmp_path / "nulls.yaml"
    path.write_text("seed:\nprune:\n  conv_fill: null\n  ratio: 0.3\n")
    assert recipes.read_recipe(path) == {"prune": {"ratio": 0.3}}


def test_cli_refuses_a_bad_recipe_with_exit_2_and_one_line(ssmprune, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("prune:\n  split: sideways\n")
    result = ssmprune("prune", "--recipe", path, "--ratio", "0.3", "--delta-fill", "bias", "-o", tmp_path / "o",
                 "--no-progress")
    assert result.exit_code == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"error: {path}: unknown split 'sideways' ('prune.split'); choose one of uniform, early, "
                    "late")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ jsonschema
def test_a_standard_validator_reads_the_schemas_the_same_way():
    jsonschema = pytest.importorskip("jsonschema")
    for schema in (RECIPE, REPORT, TOY):
        jsonschema.Draft202012Validator.check_schema(schema)
    docs = [{"prune": {"ratio": 0.3, "at": [5, "2.1"]}}, {"prune": {"ratio": 1.0}}, {"seed": "x"},
            {"auto": {"split": []}}, {"calib": {"images": 0}}, {"prune": {"merge": {"window": -1}}}]
    for doc in docs:
        ours = schemas.first_problem(doc, RECIPE) is None
        assert jsonschema.Draft202012Validator(RECIPE).is_valid(doc) == ours, doc
    for doc in ([{"n": 2}, {"n": 0}, {"n": 1, "tags": ["x", 2.5]}, {"n": 1, "extra": 1},
                 {"n": 1, "sub": {"on": 1}}, {"n": 1, "free": {"k": "x"}}]):
        assert jsonschema.Draft202012Validator(TOY).is_valid(doc) == (schemas.first_problem(doc, TOY) is None)
