"""Published figures are data: the benchmark page and the README's table are generated from
the result files under docs/benchmarks/, and the README cannot drift from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qfleet.bench import published
from tests.conftest import ROOT

LEARNING = {
    "env_id": "CartPole-v1", "seconds": 60.0, "target": 475.0, "seeds": 2, "first_seed": 0,
    "beside": False, "episodes": 10, "versus": None,
    "runs": {name: [{"env_steps": 9000, "updates": 800, "wall_s": 20.0,
                     "curve": [{"seconds": t, "return_mean": 480.0}]} for t in times]
             for name, times in (("qfleet", (9.0, 11.0)), ("sb3", (80.0, 100.0)))},
    "summary": {"qfleet": {"final_return_median": 480.0, "time_to_target_s": [9.0, 11.0],
                           "time_to_target_median_s": 10.0},
                "sb3": {"final_return_median": 480.0, "time_to_target_s": [80.0, 100.0],
                        "time_to_target_median_s": 90.0}},
    "time_ratio": 10.0 / 90.0,
}


@pytest.fixture
def results(tmp_path: Path) -> Path:
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    argv = ["bench", "learning", "--against", "sb3", "--target", "475", "--seeds", "2"]
    published.save(folder / "cartpole-vs-sb3.json", published.envelope("learning", argv,
                                                                        LEARNING))
    return folder


def test_a_saved_result_carries_its_command_machine_and_version(results):
    data = json.loads((results / "cartpole-vs-sb3.json").read_text())
    assert data["command"] == "qfleet bench learning --against sb3 --target 475 --seeds 2"
    assert data["machine"]["cpus"] >= 1 and data["machine"]["torch"]
    assert data["qfleet_version"] and data["result"] == LEARNING


def test_the_page_renders_each_result_as_its_benchmark_prints_it(results):
    page = published.page_markdown(results)
    assert "### cartpole-vs-sb3" in page
    assert "`qfleet bench learning --against sb3 --target 475 --seeds 2`" in page
    assert "qfleet: time to 475: 9.0, 11.0 s; median 10.0 s" in page
    assert "qfleet / sb3 time to target: 0.11" in page


def test_the_headline_table_gives_medians_and_their_ratio(results):
    table = published.headline_table(results)
    row = table.splitlines()[2]
    assert "CartPole-v1 time to greedy 475 (median of 2 seeds)" in row
    assert "qfleet 10.0 s, sb3 90.0 s, ratio 0.11" in row
    assert "[cartpole-vs-sb3](docs/benchmarks/cartpole-vs-sb3.json)" in row


def test_the_readme_table_is_rewritten_between_its_markers(results, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{published.HEADLINE_BEGIN}\nold\n{published.HEADLINE_END}\nend\n")
    assert published.update_readme(readme, results)
    text = readme.read_text()
    assert "old" not in text and "ratio 0.11" in text and text.endswith("end\n")
    assert not published.update_readme(readme, results)  # already up to date


def test_a_file_that_is_not_a_published_result_is_refused(results):
    (results / "notes.json").write_text(json.dumps({"runs": []}))
    with pytest.raises(ValueError, match=r"notes\.json: not a published benchmark result"):
        published.page_markdown(results)


def test_the_readme_shows_exactly_the_published_figures():
    """A changed or new result file changes the README only through the generator."""
    text = (ROOT / "README.md").read_text()
    begin = text.index(published.HEADLINE_BEGIN) + len(published.HEADLINE_BEGIN)
    shown = text[begin:text.index(published.HEADLINE_END)].strip()
    assert shown == published.headline_table(ROOT / "docs" / "benchmarks"), (
        "README's headline table is stale: python -m qfleet.bench.published --readme README.md")
