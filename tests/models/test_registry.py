"""Every registered variant, one parametrised test each (timm's tests/test_models.py): the tiny `*_test` ones
built for real and run, the published ones on the meta device (no memory). Registry, config, input size, tokens
and parameter counts must agree with each other and with numbers that do not come from the code: the official
READMEs' parameter counts and the token counts their papers give at 224 px."""

import pytest
import torch

from ssmprune_cli.io.load import config_from_dict, count_params, match_variant, site_tokens, variant_summaries
from ssmprune_cli.models import create_model, get_family, list_families, list_models, model_family

# Official READMEs, millions (PlainMamba's count the backbone, without the 1000-class head).
PUBLISHED_PARAMS = {"vim_tiny": "7", "vim_small": "26", "vim_base": "98", "vim_tiny_plus": "7",
                    "vim_small_plus": "26", "plainmamba_l1": "7.3", "plainmamba_l2": "25.7", "plainmamba_l3": "50.5",
                    "groupmamba_tiny": "23", "groupmamba_small": "34", "groupmamba_base": "57",
                    # VMamba README (assets/performance.md): v2 [s1l8]/[s1l20] and [s2l5]/[s2l15]
                    "vmamba_tiny": "30", "vmamba_small": "49", "vmamba_base": "87", "vmamba_tiny_s2l5": "31",
                    "vmamba_small_s2l15": "50", "vmamba_base_s2l15": "89"}
# Tokens at the first prune point at 224 px: Vim 14×14 patches + class token (stride 8: 27×27 + 1); PlainMamba
# 14×14; GroupMamba's and VMamba's first stage 56×56, then 28×28, 14×14, 7×7.
TOKENS_224 = {"vim": 197, "vim_plus": 730, "plainmamba": 196, "groupmamba": 3136, "vmamba": 3136}
SUMMARIES = {r["name"]: r for r in variant_summaries()}


def test_every_family_has_a_test_variant_and_every_variant_a_family():
    assert set(list_families()) == {"vim", "plainmamba", "groupmamba", "vmamba"}
    assert {model_family(n) for n in list_models()} == set(list_families())
    assert {f"{f}_test" for f in list_families()} <= set(list_models())
    assert set(PUBLISHED_PARAMS) | {f"{f}_test" for f in list_families()} == set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_registered_variant_is_consistent(name):
    tiny = name.endswith("_test")
    if tiny:
        torch.manual_seed(0)
        model = create_model(name).eval()
    else:
        with torch.device("meta"):
            model = create_model(name)
    family = model_family(name)
    assert model.family == family and get_family(family).name == family
    assert list_models(family).count(name) == 1
    # the config describes the model: it rebuilds it, and names this variant again
    config = model.config_dict()
    assert config_from_dict(get_family(family).config_cls, config) == model.cfg
    assert match_variant(family, config) == name
    # input size from the config
    size = config["img_size"]
    hw = [size, size] if isinstance(size, int) else list(size)
    assert list(model.input_size()) == [config["in_chans"], *hw]
    # what `ssmprune models` lists is this model
    row = SUMMARIES[name]
    assert row["family"] == family and row["params"] == count_params(model)
    assert row["input_size"] == list(model.input_size()) and row["layers"] == site_tokens(model)
    sites = model.prune_sites()
    assert [r["site"] for r in row["layers"]] == sites and len(set(sites)) == len(sites)
    if tiny:
        _runs_with_the_declared_tokens(name, model, config)
    else:
        _matches_the_published_numbers(name, family, model, config)


def _runs_with_the_declared_tokens(name, model, config):
    """The token count a site declares is the one that passes it (the hook also sees the last block of each
    GroupMamba stage, which is no prune site), and the logits have the declared classes."""
    seen = {}

    def hook(site, tensors, layout):
        seen[site] = tensors[0].shape[1]
        return tensors, layout

    with torch.no_grad():
        y = model(torch.randn(2, *model.input_size()), hook=hook)
    assert y.shape == (2, config["num_classes"]) and torch.isfinite(y).all()
    assert set(model.prune_sites()) <= set(seen)
    assert {s: seen[s] for s in model.prune_sites()} == {s: model.site_tokens(s)[0] for s in model.prune_sites()}
    with torch.device("meta"):
        on_meta = create_model(name)
    assert count_params(on_meta) == count_params(model)  # the meta build `models` lists is the real one


def _matches_the_published_numbers(name, family, model, config):
    published = PUBLISHED_PARAMS[name]
    params = count_params(model)
    if family == "plainmamba":
        params -= count_params(model.head)
    half_unit = 0.5 * 10 ** -(len(published.split(".")[1]) if "." in published else 0)
    assert abs(params / 1e6 - float(published)) <= half_unit + 0.01 * float(published), (name, params)
    key = "vim_plus" if name.endswith("_plus") else family
    assert site_tokens(model)[0]["tokens"] == TOKENS_224[key]
    if family in ("groupmamba", "vmamba"):
        tokens = [r["tokens"] for r in site_tokens(model)]
        assert sorted(set(tokens), reverse=True) == [3136, 784, 196, 49] and tokens == sorted(tokens, reverse=True)
        assert len(model.prune_sites()) == sum(d - 1 for d in config["depths"])
    else:
        assert len(model.prune_sites()) == config["depth"]
        assert {r["tokens"] for r in site_tokens(model)} == {TOKENS_224[key]}  # plain: one length throughout
