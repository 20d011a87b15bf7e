"""`actors.device`: where the actors' acting network runs. Placement's choice on a real
local Ray (whose GPU count is declared: no GPU here), the GPU path's batch arithmetic run
eagerly on the CPU, and the fallback of an actor placed on a GPU share whose torch sees
no GPU: it acts on its CPU, says so, and the run learns."""

import numpy as np
import pytest
import torch

import qfleet
from qfleet.actors.actor import Actor
from qfleet.actors.inference import GreedyActions, acting_device
from qfleet.config import load_config
from qfleet.driver.placement import (
    ActorNode,
    actor_bundle,
    actor_options,
    actors_fitting,
    gpu_share,
    resolve_actor_device,
)
from qfleet.envs import env_spec
from qfleet.errors import PlacementError
from qfleet.networks import build_q_network
from tests.conftest import CONFIGS, own_ray

ATARI = ["env.id=ALE/Pong-v5", "stop.env_steps=1", "network.kind=nature_cnn"]


def test_gpu_shares_fit_whole_in_each_gpu_of_each_node():
    one_box = [ActorNode(15, [0.5])]  # 15 free CPUs, a GPU half the learner's
    assert gpu_share(one_box, 15) == pytest.approx(1 / 30)
    # Seven free GPUs for 64 actors: 1/9 would pack only 63 (a share never spans GPUs).
    assert gpu_share([ActorNode(64, [1.0] * 7)], 64) == pytest.approx(1 / 10)
    # Two nodes: the learner's GPU full, the other's free; actors need CPUs on both, so the
    # shares of one node cannot stand in for the other's missing room.
    two = [ActorNode(7, []), ActorNode(8, [1.0])]
    assert gpu_share(two, 15) is None and gpu_share(two, 8) == pytest.approx(1 / 8)
    assert actors_fitting([ActorNode(3, [0.25, 1.0])], 0.25) == 3  # CPU-bound
    assert gpu_share([ActorNode(3, [])], 3) is None


def test_the_whole_batch_path_picks_the_actions_of_the_per_row_path():
    """The GPU path (every row through one static buffer, rows picked after) gives the
    CPU path's argmax for the greedy rows, for each batch shape and after new weights."""
    config = load_config(None, [*ATARI, "network.dueling=true"])
    spec = env_spec(config.env)
    torch.manual_seed(0)
    net = build_q_network(config, spec).eval().requires_grad_(False)
    per_row = GreedyActions(net, torch.device("cpu"))
    whole = GreedyActions(net, torch.device("cpu"), capture=False)
    rng = np.random.default_rng(0)
    for batch in (8, 16, 8, 16):
        obs = rng.integers(0, 256, (batch, *spec.obs_shape), dtype=np.uint8)
        rows = np.flatnonzero(rng.random(batch) < 0.6)
        assert np.array_equal(whole(obs, rows), per_row(obs, rows))
        whole.load({k: v + 0.01 * torch.randn_like(v) for k, v in net.state_dict().items()})
    assert len(whole._graphs) == 2  # one static buffer per batch shape


def test_an_actor_placed_for_cuda_without_a_visible_gpu_acts_on_its_cpu():
    device, note = acting_device("cuda")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert device.type == "cpu" and "actors.device: cuda, but torch" in note
    assert acting_device("auto") == (torch.device("cpu"), None)
    config = load_config(None, ["stop.env_steps=1", "actors.device=cuda"])
    actor = Actor(config, env_spec(config.env), 0, seed=0)
    try:
        assert actor.collect(2).device == "cpu" and actor.device_note == note
    finally:
        actor.close()


@pytest.fixture
def gpu_ray():
    """A local Ray that declares one GPU (a logical resource: torch here sees none)."""
    with own_ray(num_cpus=3, num_gpus=1):
        yield


@pytest.mark.slow  # a local Ray
def test_auto_takes_gpu_shares_only_where_the_learner_leaves_room(gpu_ray):
    base = ["stop.env_steps=1", "actors.num_actors=2"]
    half = resolve_actor_device(load_config(None, [*base, "learner.num_gpus=0.5"]), False)
    assert half.actors.device == "cuda" and half.actors.num_gpus == pytest.approx(0.25)
    assert actor_bundle(half) == {"CPU": 1.0, "GPU": 0.25}
    assert actor_options(half)["num_gpus"] == pytest.approx(0.25)
    # The learner holds the whole GPU (the default), or an autoscaler may add GPU-less
    # nodes: the CPU.
    assert resolve_actor_device(load_config(None, base), False).actors.device == "cpu"
    assert resolve_actor_device(load_config(None, [*base, "learner.num_gpus=0.5"]),
                                True).actors.device == "cpu"
    with pytest.raises(PlacementError, match=r"actors\.device: cuda requested"):
        resolve_actor_device(load_config(None, [*base, "actors.device=cuda"]), False)
    # A given share is checked too: with the learner on the whole GPU none fits.
    assert resolve_actor_device(load_config(None, [*base, "actors.num_gpus=0.1"]),
                                False).actors.device == "cpu"
    with pytest.raises(PlacementError, match=r"of GPU share 0\.1 do not fit"):
        resolve_actor_device(load_config(None, [*base, "actors.device=cuda",
                                                "actors.num_gpus=0.1"]), False)
    with pytest.raises(PlacementError, match=r"autoscaler needs actors\.num_gpus"):
        resolve_actor_device(load_config(None, [*base, "actors.device=cuda"]), True)
    cpu = resolve_actor_device(load_config(None, [*base, "actors.device=cpu",
                                                  "learner.num_gpus=0.5"]), False)
    assert cpu.actors.device == "cpu" and "GPU" not in actor_bundle(cpu)


@pytest.mark.slow  # a real run
def test_a_fleet_on_gpu_shares_without_a_usable_gpu_falls_back_and_learns(gpu_ray, tmp_path,
                                                                          capsys):
    """`qfleet.train` on a Ray with a declared GPU: the learner and the actors are placed
    on shares of it; torch sees none, so both run on the CPU, the driver says so once,
    and CartPole still reaches its target."""
    summary = qfleet.train(CONFIGS / "cartpole.yaml",
                           ["learner.num_gpus=0.5", "stop.time_s=120", "stop.target_return=200"],
                           run_dir=tmp_path / "run")
    out = capsys.readouterr().out
    assert "1 actors x 16 envs acting on GPU shares" in out
    assert out.count("act on the CPU: torch in their process sees no GPU") == 1
    assert summary["stopped_by"] == "target_return", out[-2000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_captured_graphs_pick_the_eager_actions_on_a_gpu():
    """On a GPU: the graph replays (after warm-up and capture) give the eager GPU path's
    actions, also after new weights are loaded into the captured network."""
    config = load_config(None, [*ATARI, "network.dueling=true"])
    spec = env_spec(config.env)
    torch.manual_seed(0)
    cuda = torch.device("cuda")
    net = build_q_network(config, spec).eval().requires_grad_(False).to(cuda)
    graphed = GreedyActions(net, cuda)
    eager = GreedyActions(net, cuda, capture=False)
    rng = np.random.default_rng(0)
    for step in range(12):
        obs = rng.integers(0, 256, (8, *spec.obs_shape), dtype=np.uint8)
        rows = np.arange(8)
        assert np.array_equal(graphed(obs, rows), eager(obs, rows)), step
        if step == 6:
            graphed.load({k: v + 0.05 * torch.randn_like(v) for k, v in net.state_dict().items()})
    assert graphed._graphs[(8, *spec.obs_shape)].graph is not None
