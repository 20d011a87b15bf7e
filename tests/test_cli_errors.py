"""Bad input at the command line: one line on stderr naming the problem, exit code 2."""

import pytest
import torch

from tests.conftest import CONFIGS, assert_one_line_error, qfleet


@pytest.mark.parametrize(("extra", "fragment"), [
    (["learner.lr=-1"], "learner.lr: Input should be greater than 0"),
    (["learner.lrr=0.1"], "learner.lrr: unknown key"),
    (["actors.num_actors=many"], "actors.num_actors: expected an integer or 'auto'"),
    (["env.id=NoSuchEnv-v0"], "env.id: unknown Gymnasium environment 'NoSuchEnv-v0'"),
    (["env.id=ALE/NoSuchGame-v5"], "env.id: unknown Atari environment"),
    (["replay.capacity=1000000000", "replay.min_size=10"], "replay.capacity: 1000000000"),
    (["network.kind=nature_cnn"], "network.kind: nature_cnn needs"),
])
def test_bad_values_are_refused_before_ray_starts(extra, fragment, tmp_path):
    result = qfleet("train", CONFIGS / "cartpole.yaml", *extra, "--run-dir", tmp_path / "r",
                    timeout=120)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # starts Ray for its last case
def test_unreadable_and_invalid_yaml(tmp_path):
    assert_one_line_error(qfleet("train", tmp_path / "missing.yaml"), "cannot read config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner:\n  lr: [1, 2\n")
    assert_one_line_error(qfleet("train", bad), "bad.yaml", "line")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")  # once trained CartPole with every default for 600 s
    assert_one_line_error(qfleet("train", empty, "--run-dir", tmp_path / "r"), "is empty")
    assert not (tmp_path / "r").exists()
    assert_one_line_error(qfleet("train", "--bogus-option"), "No such option: --bogus-option")


@pytest.mark.slow  # trains a run to truncate
def test_evaluate_refuses_missing_truncated_and_foreign_checkpoints(tmp_path):
    assert_one_line_error(qfleet("evaluate", tmp_path / "nope.pt"), "does not exist")
    assert_one_line_error(qfleet("evaluate", tmp_path), "not a qfleet run directory")
    truncated = tmp_path / "ckpt-0000000001.pt"
    truncated.write_bytes(b"PK\x03\x04 not really a checkpoint")
    assert_one_line_error(qfleet("evaluate", truncated), "unreadable or corrupted")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    assert_one_line_error(qfleet("evaluate", foreign), "not a qfleet checkpoint")


def test_resume_of_a_directory_that_is_not_a_run(tmp_path):
    assert_one_line_error(qfleet("train", "--resume", tmp_path), "not a qfleet run directory")


@pytest.mark.slow  # starts a local Ray
@pytest.mark.parametrize(("extra", "fragment"), [
    (["actors.num_cpus=64"], "actors.num_cpus: 64 CPUs per actor, but this machine has"),
    (['actors.resources={"tpu_pod": 1}'], "resources {'tpu_pod': 1.0}"),
    (["learner.device=cuda"], "no GPU is visible to the learner (torch "),  # and why
])
def test_resources_the_cluster_can_never_provide_fail_fast(extra, fragment, tmp_path):
    import time

    start = time.monotonic()
    result = qfleet("train", CONFIGS / "cartpole.yaml", *extra, "--run-dir", tmp_path / "r",
                    timeout=120)
    assert_one_line_error(result, fragment)
    assert time.monotonic() - start < 60
