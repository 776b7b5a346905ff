from pathlib import Path

import pytest

from humpback_lite.recipe import Recipe, RecipeError, from_dict, load_recipe

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "recipes").glob("*.yaml")) + sorted((ROOT / "tests" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_shows_its_command(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# humpback run ") and path.name in first


def test_overrides_change_nested_values_with_yaml_types():
    r = from_dict({}, ["train.epochs=2", "rounds=3", "curate.top_fraction=0.25", "data.corpus=[a.txt, b.md]"])
    assert r.train.epochs == 2.0 and r.rounds == 3 and r.curate.top_fraction == 0.25
    assert r.data.corpus == ["a.txt", "b.md"]


def test_unknown_key_names_the_dotted_key_and_suggests():
    with pytest.raises(RecipeError, match=r"train\.learnig_rate: unknown key \(did you mean train\.learning_rate\?\)"):
        from_dict({"train": {"learnig_rate": 1e-4}})


def test_wrong_type_names_key_and_allowed_type():
    with pytest.raises(RecipeError, match=r"rounds: expected int, got 'two'"):
        from_dict({"rounds": "two"})
    with pytest.raises(RecipeError, match=r"curate\.mode: expected one of 'expected', 'greedy', .*'combined', got 'vibes'"):
        from_dict({}, ["curate.mode=vibes"])


def test_out_of_range_value_names_key():
    with pytest.raises(RecipeError, match=r"augment\.top_p: must be in \(0, 1\]"):
        from_dict({"augment": {"top_p": 1.5}})
    with pytest.raises(RecipeError, match=r"^rounds: must be >= 1"):
        from_dict({"rounds": 0})
    with pytest.raises(RecipeError, match=r"train\.processes: must divide batch_size \(4\)"):
        from_dict({}, ["train.processes=3"])


def test_bad_override_syntax_is_explained():
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        from_dict({}, ["rounds"])


def test_flash_attention_is_off_unless_a_recipe_turns_it_on():
    assert from_dict({}).engine.flash_attn == "on"
    assert from_dict({"engine": {"flash_attn": True}}).engine.flash_attn == "on"  # YAML's bare on
    with pytest.raises(RecipeError, match=r"engine\.flash_attn: expected one of 'on', 'off'"):
        from_dict({}, ["engine.flash_attn=auto"])


def test_missing_recipe_file_is_a_clear_error(tmp_path):
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_extra_buffers_accepts_yaml_on_off_and_names_a_bad_value():
    # YAML 1.1 reads bare on/off as booleans; the recipe means the words
    assert from_dict({"engine": {"extra_buffers": False}}).engine.extra_buffers == "off"
    assert from_dict({}, ["engine.extra_buffers=on"]).engine.extra_buffers == "on"
    with pytest.raises(RecipeError, match=r"engine\.extra_buffers: expected one of 'auto', 'on', 'off'"):
        from_dict({}, ["engine.extra_buffers=sometimes"])


def test_remote_backend_and_ray_settings_are_checked_by_name():
    with pytest.raises(RecipeError, match=r"engine\.base_url: needed with engine\.backend=openai"):
        from_dict({}, ["engine.backend=openai"])
    with pytest.raises(RecipeError, match=r"engine\.executor: expected one of 'local', 'ray'"):
        from_dict({}, ["engine.executor=spark"])
    with pytest.raises(RecipeError, match=r"ray\.workers: must be >= 1"):
        from_dict({}, ["ray.workers=0"])
    r = from_dict({}, ["engine.backend=openai", "engine.base_url=http://h:8000/v1", "engine.api_key_env=MY_KEY",
                       "engine.executor=ray", "ray.address=auto"])
    assert (r.engine.base_url, r.engine.api_key_env, r.ray.address) == ("http://h:8000/v1", "MY_KEY", "auto")
