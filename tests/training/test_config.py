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


@pytest.mark.parametrize("toml, message", [
    ('[train]\nsteps = "many"\n', "train.steps: expected int, got str 'many'"),
    ("[train]\nlr = true\n", "train.lr: expected float, got bool True"),
    ('[model]\ng_hidden = ["wide"]\n', "model.g_hidden: expected list of int, got list ['wide']"),
    ("[model]\ng_hidden = 8\n", "model.g_hidden: expected list, got int 8"),
    ("[optim]\nlr = 1\n", "unknown section(s) [optim]"),
    ("[train]\nstepz = 3\n", "unknown key(s) in [train]: stepz"),
    ("train = 3\n", "train: expected a [train] table"),
    ("name = 3\n", "name: expected str"),
])
def test_recipe_files_are_checked_like_overrides(tmp_path, toml, message):
    path = tmp_path / "mine.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as e:
        load_recipe(str(path))
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


def test_file_and_override_errors_read_alike(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[train]\nsteps = "many"\n')
    with pytest.raises(ConfigError) as from_file:
        load_recipe(str(path))
    with pytest.raises(ConfigError) as from_set:
        apply_overrides(load_recipe("digits"), ['train.steps="many"'])
    assert str(from_file.value).split(": ", 1)[1] == str(from_set.value).split(": ", 1)[1]
    assert str(from_set.value).startswith("--set train.steps=\"many\": ")


def test_a_good_file_loads_and_ints_widen_to_floats(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[train]\nsteps = 7\nlr = 1\n[model]\ng_hidden = [8, 8]\n')
    cfg = load_recipe(str(path))
    assert cfg.name == "mine" and cfg.train.steps == 7 and cfg.model.g_hidden == [8, 8]
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1.0
