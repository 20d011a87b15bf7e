"""Custom environments: `module:attr` classes and factories with `env.kwargs`, packages
that register their ids (`env.imports`), the older Atari ids, and one-line refusals."""

from __future__ import annotations

import numpy as np
import pytest

from qfleet.config import ConfigError, load_config
from qfleet.envs import env_spec, make_vec_env
from tests.conftest import CONFIGS, assert_one_line_error, qfleet, summary


def spec_of(*overrides: str):
    return env_spec(load_config(None, ["stop.env_steps=10", *overrides]).env)


@pytest.mark.parametrize("env_id", ["tests.envs:Corridor", "tests.envs:make_corridor"])
def test_a_class_or_a_factory_with_kwargs(env_id):
    spec = spec_of(f"env.id={env_id}", "env.kwargs={length: 7}")
    assert spec.obs_shape == (7,) and spec.num_actions == 2 and not spec.is_atari
    config = load_config(None, ["stop.env_steps=10", f"env.id={env_id}",
                                "env.kwargs={length: 7}", "env.max_episode_steps=3"])
    envs = make_vec_env(config.env, num_envs=2, seed=0)
    try:
        envs.reset(seed=0)
        for _ in range(3):
            step = envs.step(np.zeros(2, dtype=np.int64))  # left: never at the end
        assert step.truncated.all()  # env.max_episode_steps applies to a class too
    finally:
        envs.close()


def test_a_package_that_registers_its_ids_is_imported_first(tmp_path):
    # In a fresh process nothing has imported the module that registers the id.
    result = qfleet("train", CONFIGS / "cartpole.yaml", "env.id=QfleetCorridor-v0",
                    "--run-dir", tmp_path / "r", timeout=120)
    assert_one_line_error(result, "unknown Gymnasium environment 'QfleetCorridor-v0'")
    assert spec_of("env.id=QfleetCorridor-v0", "env.imports=[tests.envs]",
                   "env.kwargs={length: 3}").obs_shape == (3,)


def test_older_atari_ids_get_the_dqn_preprocessing_or_a_pointer_to_v5():
    spec = spec_of("env.id=BreakoutNoFrameskip-v4")
    assert spec.is_atari and spec.obs_shape == (4, 84, 84)
    for env_id in ("Breakout-v4", "BreakoutDeterministic-v4"):
        with pytest.raises(ConfigError, match="use 'ALE/Breakout-v5'"):
            spec_of(f"env.id={env_id}")


@pytest.mark.parametrize(("env_id", "fragment"), [
    ("no_such_module:Env", "cannot import module 'no_such_module'"),
    ("tests.envs:Nowhere", "has no attribute 'Nowhere'"),
    ("tests.envs:SteeringWheel", "Box action space; DQN needs Discrete actions"),
    ("tests.envs:not_an_env", "made a str, not a gymnasium.Env"),
])
def test_bad_custom_envs_are_one_line_bad_input(env_id, fragment, tmp_path):
    result = qfleet("train", CONFIGS / "cartpole.yaml", f"env.id={env_id}",
                    "--run-dir", tmp_path / "r", timeout=120)
    assert_one_line_error(result, fragment)


def test_a_bad_import_is_one_line_bad_input(tmp_path):
    result = qfleet("train", CONFIGS / "cartpole.yaml", "env.imports=[no_such_package]",
                    "--run-dir", tmp_path / "r", timeout=120)
    assert_one_line_error(result, "env.imports: cannot import 'no_such_package'")


@pytest.mark.slow
def test_a_fleet_trains_on_a_custom_env_class(tmp_path):
    run_dir = tmp_path / "run"
    # A time limit: a greedy policy that never reaches the end would make the final
    # evaluation's episodes endless.
    result = qfleet("train", CONFIGS / "cartpole.yaml", "env.id=tests.envs:Corridor",
                    "env.kwargs={length: 4}", "env.max_episode_steps=50", "stop.env_steps=3000",
                    "stop.target_return=null", "--run-dir", run_dir, timeout=400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    s = summary(run_dir)
    assert s["env_id"] == "tests.envs:Corridor" and s["env_steps"] >= 3000
    assert s["episodes"] > 0
