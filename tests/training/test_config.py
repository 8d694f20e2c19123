"""Recipes and overrides."""

import pytest

from training.config import ConfigError, RecipeConfig, apply_overrides, list_recipes, load_recipe

RECIPES = {"25gaussians", "8gaussians", "swissroll", "digits", "mnist", "kddcup99", "tabular"}


def test_every_recipe_loads():
    assert set(list_recipes()) >= RECIPES
    for name in RECIPES:
        cfg = load_recipe(name)
        assert cfg.name == name and cfg.train.steps > 0


def test_overrides_parse_toml_values():
    cfg = apply_overrides(load_recipe("25gaussians"), [
        "train.steps=7", "train.lr=1e-3", "train.entropy=jsd", "model.g_hidden=[8, 8]",
        "train.mcmc_prior=false", "train.gp_weight=1",
    ])
    assert cfg.train.steps == 7 and cfg.train.lr == 1e-3 and cfg.train.entropy == "jsd"
    assert cfg.model.g_hidden == [8, 8] and cfg.train.mcmc_prior is False
    assert isinstance(cfg.train.gp_weight, float)


@pytest.mark.parametrize("item, message", [
    ("train.stepz=3", "no such key"),
    ("optim.lr=1", "expected data.KEY"),
    ("train.steps", "expected section.key=value"),
    ("train.steps=abc", "expected int"),
])
def test_bad_overrides_say_what_to_fix(item, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(load_recipe("digits"), [item])


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ConfigError, match="25gaussians"):
        load_recipe("nope")


def test_round_trip_through_dict():
    cfg = load_recipe("kddcup99")
    assert RecipeConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown key"):
        RecipeConfig.from_dict({"name": "x", "train": {"bogus": 1}})
