"""Property-based fuzzing of recipe files, from the YAML text to the schedule `prune` would run: any file either
resolves to a valid plan or is refused with a documented error (RecipeError, exit 2; docs/errors.md), never a
TypeError from deep inside the planner. 1,000 examples a target."""

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ssmprune_cli.errors import SsmpruneError
from ssmprune_cli.models import create_model
from ssmprune_cli.pruning import recipe as recipes
from ssmprune_cli.pruning.schedule import plan_from_recipe, policy_candidates

FUZZ = settings(max_examples=1000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
MODELS = {"vim": create_model("vim_test"), "vmamba": create_model("vmamba_test")}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True),
                    st.text(max_size=8), st.sampled_from(["1", "2", "3", "1.1", "2.2", "hold", "calib", "uniform"]))
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                          max_size=3), max_leaves=5)
PLAUSIBLE = {
    "seed": st.integers(-2, 2**40),
    "note": st.text(max_size=10),
    "model": st.text(max_size=10),
    "prune.at": st.lists(st.one_of(st.integers(-1, 6), st.sampled_from(["1", "2", "3", "4", "1.1", "3.2", "x"])),
                         max_size=4),
    "prune.at_fraction": st.lists(st.floats(-0.5, 1.5), max_size=3),
    "prune.stage": st.one_of(st.integers(-1, 5), st.lists(st.integers(-1, 5), max_size=3)),
    "prune.keep": st.lists(st.one_of(st.floats(-0.5, 1.5), st.integers(-2, 80)), max_size=4),
    "prune.ratio": st.floats(-0.5, 1.5),
    "prune.split": st.sampled_from(["uniform", "early", "late", "middle"]),
    "prune.score": st.sampled_from(["clip", "l1", "l2", "noclip", "random", "max"]),
    "prune.align": st.sampled_from(["aligned", "none", "both"]),
    "prune.conv_fill": st.sampled_from(["hold", "zero", "packed", "mean"]),
    "prune.delta_fill": st.sampled_from(["calib", "bias", "zero", "one"]),
    "calib.images": st.integers(-2, 600),
    "calib.batch_size": st.integers(-2, 64),
    "calib.holdout": st.integers(-2, 300),
    "auto.enabled": st.booleans(),
    "auto.conv_fill": st.lists(st.sampled_from(["hold", "zero", "packed", "mean"]), max_size=4),
    "auto.delta_fill": st.lists(st.sampled_from(["calib", "bias", "zero", "one"]), max_size=4),
    "auto.split": st.lists(st.sampled_from(["uniform", "early", "late", "middle"]), max_size=4),
}


@st.composite
def recipe_texts(draw):
    """A recipe as a user might write it: known fields with plausible or junk values, unknown fields, wrong
    nesting, then dumped to YAML and sometimes cut or garbled."""
    doc = {}
    for field in draw(st.lists(st.sampled_from(sorted(PLAUSIBLE) + ["prune.bogus", "bogus"]), max_size=7)):
        value = draw(st.one_of(PLAUSIBLE.get(field, junk), junk) if draw(st.integers(0, 4)) == 0
                     else PLAUSIBLE.get(field, junk))
        section, _, key = field.rpartition(".")
        target = doc.setdefault(section, {}) if section else doc
        if isinstance(target, dict):
            target[key] = value
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.sampled_from(["prune", "calib", "auto"]))] = draw(junk)
    text = yaml.safe_dump(doc, sort_keys=False)
    if draw(st.integers(0, 9)) == 0:
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=6)) + text[cut:]
    return text


def plans_or_refuses(tmp_path_factory, text, family, seed_flags):
    path = tmp_path_factory.getbasetemp() / "fuzz_recipe.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    model = MODELS[family]
    try:
        recipe = recipes.resolve(None, family, path, seed_flags)
        spec = plan_from_recipe(model, recipe)
        if recipe["auto"].get("enabled"):
            policy_candidates(model, spec, recipe["prune"], recipe["auto"])
        event("planned")
    except SsmpruneError as exc:
        assert str(exc).strip()
        event(f"refused: {type(exc).__name__}")


@FUZZ
@given(text=recipe_texts(), family=st.sampled_from(sorted(MODELS)),
       flags=st.sampled_from([None, {"prune": {"ratio": 0.3}}, {"prune": {"keep": [0.5], "at": ["2"]}}]))
def test_recipe_files_plan_or_are_refused(tmp_path_factory, text, family, flags):
    plans_or_refuses(tmp_path_factory, text, family, flags)


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200)), family=st.sampled_from(sorted(MODELS)))
def test_arbitrary_text_plans_or_is_refused(tmp_path_factory, text, family):
    plans_or_refuses(tmp_path_factory, text, family, None)
