"""The config and CLI references are generated from the code: every key documented in the
schema, every default as the code has it, `qfleet config KEY` for one key."""

import importlib.util
from pathlib import Path

import pytest
from pydantic import BaseModel, create_model
from typer.testing import CliRunner

from qfleet import clidoc, configref
from qfleet.cli import app
from qfleet.config import Config, ConfigError, LearnerConfig, ReplayConfig


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    found = [model]
    for info in model.model_fields.values():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            found += _models(info.annotation)
    return found


@pytest.mark.parametrize("model", _models(Config), ids=lambda m: m.__name__)
def test_every_field_of_every_model_has_a_description(model):
    assert model.model_config.get("use_attribute_docstrings")
    for name, info in model.model_fields.items():
        assert info.description and info.description.strip(), f"{model.__name__}.{name}"


def test_every_section_has_a_docstring():
    for group in configref.groups():
        assert group.model.__doc__ and group.summary, group.key
        assert group.doc == " ".join(group.model.__doc__.split())


def test_fields_are_the_dotted_keys_of_the_schema():
    keys = [f.key for f in configref.fields()]
    expected = [f"{section}.{name}" for section, info in Config.model_fields.items()
                for name in info.annotation.model_fields]
    assert keys == expected
    by_key = {f.key: f for f in configref.fields()}
    assert by_key["learner.lr"].default == "0.0001"
    assert by_key["learner.grad_clip"].default == "null"
    assert by_key["network.hidden"].default == "[64, 64]"
    assert by_key["env.kwargs"].default == "{}"
    assert by_key["learner.lr"].type == "float, > 0, ≤ 1"
    assert by_key["actors.num_actors"].type == "int | auto"
    # Config's own default for the section, not StopConfig's class default.
    assert by_key["stop.time_s"].default == "600"
    assert by_key["stop.time_s"].section_default == "null"


def test_markdown_lists_every_key_with_its_default():
    text = configref.markdown()
    for section in Config.model_fields:
        assert f"## `{section}`" in text, section
    for f in configref.fields():
        assert f"| `{f.key}` | `{f.default}`" in text, f.key
    assert "qfleet train CONFIG.yaml section.key=value" in text


def test_markdown_escapes_pipes_in_cells():
    for line in configref.markdown().splitlines():
        if line.startswith("| `"):
            assert line.replace("\\|", "").count("|") == 4, line


def test_a_changed_default_shows_without_a_hand_edit():
    class FastLearner(LearnerConfig):
        lr: float = 0.0123

    Changed = create_model("Changed", __base__=Config,
                           learner=(FastLearner, FastLearner()),
                           replay=(ReplayConfig, ReplayConfig(capacity=4242)))
    text = configref.markdown(model=Changed)
    assert "| `learner.lr` | `0.0123` |" in text
    # A section's own default instance: a `replay` section written out gets the class's.
    assert "| `replay.capacity` | `4242` (`100000` in a `replay` section that leaves" in text
    assert "Adam's learning rate" in text  # the base's docstring, kept by the override
    assert "0.0123" in configref.describe("learner.lr", model=Changed)
    assert "| `learner.lr` | `0.0001` |" in configref.markdown()


def test_describe_a_key_and_a_section():
    text = configref.describe("learner.lr")
    assert "learner.lr" in text and "0.0001" in text and "learning rate" in text
    section = configref.describe("replay")
    assert "replay.capacity" in section and "replay.min_size" in section
    assert "env.kwargs" in configref.describe("env.kwargs.render_mode")


@pytest.mark.parametrize(("key", "suggested"), [
    ("learner.lrr", "learner.lr"),
    ("lr", "learner.lr"),
    ("actors.epsilom", "actors.epsilon"),
    ("lerner", "learner"),
])
def test_unknown_key_names_the_closest(key, suggested):
    with pytest.raises(ConfigError) as info:
        configref.describe(key)
    message = str(info.value)
    assert repr(key) in message and suggested in message
    assert "\n" not in message


def test_qfleet_config_prints_a_key_and_the_reference():
    runner = CliRunner()
    result = runner.invoke(app, ["config", "learner.lr"])
    assert result.exit_code == 0, result.output
    assert "Adam's learning rate" in result.stdout and "0.0001" in result.stdout
    whole = runner.invoke(app, ["config"])
    assert whole.exit_code == 0
    assert "| `eval.every_s` | `30` |" in whole.stdout


def test_qfleet_config_unknown_key_is_one_line_and_exit_2():
    result = CliRunner().invoke(app, ["config", "learner.nope"])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("qfleet: error: unknown config key 'learner.nope'")
    assert "Traceback" not in result.stderr


def test_train_help_points_to_qfleet_config():
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "qfleet config KEY" in " ".join(result.stdout.split())


def test_cli_markdown_covers_every_command_and_option():
    text = clidoc.cli_markdown()
    for command in ("train", "tune", "evaluate", "config", "bench", "bench learner"):
        assert f"`qfleet {command}`" in text, command
    assert "`--episodes <int>` | `10` | Episodes to run." in text
    assert "`--save <" in text  # the bench group's own option


def test_mkdocs_hook_replaces_the_markers():
    path = Path(__file__).parent.parent / "docs" / "hooks" / "reference.py"
    spec = importlib.util.spec_from_file_location("reference_hook", path)
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = "# Config\n\n<!-- generated: config-reference -->\n\nAfter.\n"
    out = hook.on_page_markdown(page, page=None, config=None, files=None)
    assert "<!-- generated" not in out
    assert out.startswith("# Config\n\n") and out.endswith("\n\nAfter.\n")
    assert "| `learner.lr` | `0.0001` |" in out
    cli = hook.on_page_markdown("<!-- generated: cli-reference -->\n", None, None, None)
    assert "## `qfleet train`" in cli
    assert hook.on_page_markdown("plain\n", None, None, None) == "plain\n"
