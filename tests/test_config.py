"""Config loading, overrides and validation: one clear message naming the key."""

from pathlib import Path

import pytest

from qfleet.config import ConfigError, load_config
from qfleet.envs import env_spec

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_names_a_real_env(path):
    config = load_config(path)
    spec = env_spec(config.env)
    assert spec.num_actions > 1


def test_shipped_configs_cover_the_documented_runs():
    names = {p.stem for p in CONFIGS}
    assert {"cartpole", "lunarlander", "lunarlander-barebone", "spaceinvaders",
            "spaceinvaders-cpu"} <= names


def test_overrides_are_typed_and_dotted(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("env: {id: CartPole-v1}\nstop: {env_steps: 10}\n")
    c = load_config(f, ["learner.lr=3e-4", "actors.num_actors=5", "network.hidden=[32, 16]",
                        "learner.grad_clip=null"])
    assert c.learner.lr == pytest.approx(3e-4)
    assert c.actors.num_actors == 5
    assert c.network.hidden == (32, 16)
    assert c.learner.grad_clip is None
    assert c.stop.env_steps == 10


@pytest.mark.parametrize(("text", "overrides", "expected"), [
    ("learner: {lrr: 0.1}", [], "learner.lrr: unknown key"),
    ("bogus: {a: 1}", [], "bogus: unknown key"),
    ("learner: {lr: fast}", [], "learner.lr: Input should be a valid number"),
    ("learner: {lr: -1}", [], "learner.lr: Input should be greater than 0"),
    ("actors: {num_actors: 0}", [], "actors.num_actors: expected 1..4096 or auto"),
    ("replay: {capacity: 10, min_size: 100}", [], "replay.min_size (100) exceeds"),
    ("stop: {}", [], "stop: set at least one of"),
    ("env: {id: CartPole-v1}", ["learner.batch_size=abc"], "learner.batch_size: Input should"),
    ("env: {id: CartPole-v1}", ["lr=1"], "expected section.key=value"),
    ("- a\n- b", [], "expected a mapping"),
    ("just words", [], "expected a mapping"),
    ("", [], "is empty"),
    ("# only a comment\n", [], "is empty"),
    ("learner: {lr: [1, 2", [], "line"),
])
def test_bad_configs_give_one_line_naming_the_key(tmp_path, text, overrides, expected):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(f, overrides)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("env_id", ["NoSuchEnv-v0", "ALE/NoSuchGame-v5"])
def test_unknown_env_ids_are_refused(env_id):
    config = load_config(None, [f"env.id={env_id}", "stop.env_steps=1"])
    with pytest.raises(ConfigError, match=r"env\.id: unknown"):
        env_spec(config.env)


def test_every_config_key_is_documented_in_the_schema():
    """The reference (`qfleet config`, the docs) is generated from these docstrings."""
    from qfleet.config import Config

    for section, field in Config.model_fields.items():
        assert field.description, section
        for key, info in field.annotation.model_fields.items():
            assert info.description, f"{section}.{key}"
