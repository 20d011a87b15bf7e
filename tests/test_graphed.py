"""The graphed update: on its static buffers it computes what the learner's eager update
does, and a non-finite loss leaves parameters and Adam's moments untouched. The capture
itself needs a GPU (the last test, skipped without one)."""

import copy

import pytest
import torch

from qfleet.actors.actor import Actor
from qfleet.config import load_config
from qfleet.envs import env_spec
from qfleet.learner.graphed import GraphedUpdate
from qfleet.learner.learner import Learner, make_adam

C51 = ["learner.distribution=c51", "learner.v_min=0", "learner.v_max=50", "learner.atoms=21"]
QR = ["learner.distribution=qr", "learner.atoms=8"]
NOISY = ["network.noisy=true", "network.dueling=true"]
HEADS = pytest.mark.parametrize("head", [[], C51, QR, C51 + NOISY],
                                ids=["expected", "c51", "qr", "c51-noisy"])


def filled_learner(device: str = "cpu", head: list[str] | None = None,
                   cuda_graph: bool = False) -> Learner:
    config = load_config(None, [
        "env.id=CartPole-v1", "replay.kind=prioritized", "replay.min_size=64",
        "learner.batch_size=32", "learner.double_dqn=true", "learner.loss=huber",
        "learner.grad_clip=10", "learner.lr=1e-3", f"learner.device={device}",
        f"learner.cuda_graph={cuda_graph}", *(head or [])])
    spec = env_spec(config.env)
    learner, actor = Learner(config, spec, device), Actor(config, spec, 0, seed=0)
    while len(learner.replay) < 256:
        learner.add(actor.collect(16))
    actor.close()
    return learner


def graphed_twin(learner: Learner, capture: bool) -> Learner:
    """A copy of `learner` whose `step` takes the graphed path (captured on a GPU, run
    eagerly on its static buffers without `capture`), as `step` itself sets it up."""
    twin = copy.deepcopy(learner)
    lc = twin.config.learner
    twin._graphed = GraphedUpdate(twin.online, twin.target, twin.optimizer,
                                  double=lc.double_dqn, kind=lc.loss, grad_clip=lc.grad_clip,
                                  capture=capture)
    twin._use_graph = lambda: True
    return twin


def twins(learner: Learner, capture: bool):
    """A bare optimizer copy and a `GraphedUpdate` on its own copy, same start (for the
    graph's own mechanics: the skip on the device, the release)."""
    lc = learner.config.learner
    g_online, g_target = copy.deepcopy(learner.online), copy.deepcopy(learner.target)
    g_opt = make_adam(g_online.parameters(), lc.lr, lc.adam_eps, learner.device)
    graphed = GraphedUpdate(g_online, g_target, g_opt, double=True, kind="huber",
                            grad_clip=10.0, capture=capture)
    return None, (g_online, g_opt, graphed)


def assert_same_training(learner: Learner, capture: bool, updates: int = 12) -> None:
    """`Learner.step` eager and graphed, on the same samples (and, for noisy nets, the same
    noise: the same seed before each update): the same losses, Q-values and weights."""
    twin = graphed_twin(learner, capture)
    for k in range(updates):
        sample = learner.sample()
        torch.manual_seed(k)
        eager = learner.step(sample)
        torch.manual_seed(k)
        graphed = twin.step(sample)
        assert eager is not None and graphed is not None
        torch.testing.assert_close(graphed.loss, eager.loss)
        torch.testing.assert_close(graphed.mean_q, eager.mean_q)
    assert learner.updates == twin.updates == updates
    assert learner._graphed is None  # the eager one never took the graphed path
    for p, q in zip(learner.online.parameters(), twin.online.parameters(), strict=True):
        torch.testing.assert_close(q, p)
    for p, q in zip(learner.target.parameters(), twin.target.parameters(), strict=True):
        torch.testing.assert_close(q, p)


@HEADS
def test_the_graphed_update_trains_as_the_eager_one(head):
    assert_same_training(filled_learner(head=head), capture=False)


def test_a_nonfinite_loss_is_skipped_on_the_device():
    learner = filled_learner()
    _, (g_online, g_opt, graphed) = twins(learner, capture=False)
    batch, _, weights = learner.replay.sample(32)
    graphed(batch, weights)  # Adam's moments exist from here on
    before = copy.deepcopy(g_online.state_dict())
    moments = {k: v.clone() for k, v in g_opt.state[next(g_online.parameters())].items()}
    bad = list(batch)
    bad[2] = torch.full_like(batch[2], float("nan"))  # NaN rewards: a NaN loss
    _, _, skipped = graphed(bad, weights)
    assert float(skipped) == 1.0
    for k, v in g_online.state_dict().items():
        assert torch.equal(v, before[k])
    for k, v in g_opt.state[next(g_online.parameters())].items():
        assert torch.equal(v, moments[k]), k
    _, _, skipped = graphed(batch, weights)  # and the next good batch steps again
    assert float(skipped) == 0.0
    assert not torch.equal(next(g_online.parameters()), before[next(iter(before))])
    graphed.release()
    assert not hasattr(g_opt, "found_inf")


def test_the_learners_graphed_path_counts_a_nonfinite_streak_and_ends_it():
    learner = filled_learner()
    lc = learner.config.learner
    learner._graphed = GraphedUpdate(learner.online, learner.target, learner.optimizer,
                                     double=True, kind="huber", grad_clip=lc.grad_clip,
                                     capture=False)  # what `step` makes on a GPU
    batch, keys, weights = learner.replay.sample(32)
    bad = list(batch)
    bad[2] = torch.full_like(batch[2], float("nan"))
    learner._graphed_step(bad, keys, weights)
    assert (learner.nonfinite_skipped, learner.nonfinite_streak, learner.updates) == (1, 1, 0)
    learner._graphed_step(batch, keys, weights)
    assert (learner.nonfinite_skipped, learner.nonfinite_streak, learner.updates) == (1, 0, 1)


def test_a_checkpoint_of_a_graphed_learner_loads_on_a_cpu():
    """A GPU learner's graph made Adam `capturable`; the saved state says so."""
    learner = filled_learner()
    learner.step(learner.sample())
    state = learner.state_dict()
    for group in state["optimizer"]["param_groups"]:
        group["capturable"] = True  # as a CUDA-graphed learner saves it
    restored = filled_learner()
    restored.load_state_dict(state)
    assert all(not g["capturable"] for g in restored.optimizer.param_groups)
    restored.step(restored.sample())
    assert restored.updates == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to capture")
@pytest.mark.parametrize("head", [[], C51, QR], ids=["expected", "c51", "qr"])
def test_the_captured_graph_trains_as_the_eager_update_on_a_gpu(head):
    assert_same_training(filled_learner("cuda", head), capture=True, updates=20)
    learner = filled_learner("cuda", head, cuda_graph=True)
    for _ in range(5):  # and a learner with learner.cuda_graph takes the graphed path
        learner.step(learner.sample())
    assert learner.updates == 5 and learner._graphed is not None
    assert learner._graphed._graph is not None
