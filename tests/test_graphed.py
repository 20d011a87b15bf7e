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
from qfleet.learner.loss import dqn_loss

C51 = ["learner.distribution=c51", "learner.v_min=0", "learner.v_max=50", "learner.atoms=21"]
QR = ["learner.distribution=qr", "learner.atoms=8"]
NOISY = ["network.noisy=true", "network.dueling=true"]
HEADS = pytest.mark.parametrize("head", [[], C51, QR, C51 + NOISY],
                                ids=["expected", "c51", "qr", "c51-noisy"])


def filled_learner(device: str = "cpu", head: list[str] | None = None) -> Learner:
    config = load_config(None, [
        "env.id=CartPole-v1", "replay.kind=prioritized", "replay.min_size=64",
        "learner.batch_size=32", "learner.double_dqn=true", "learner.loss=huber",
        "learner.grad_clip=10", "learner.lr=1e-3", f"learner.device={device}",
        *(head or [])])
    spec = env_spec(config.env)
    learner, actor = Learner(config, spec, device), Actor(config, spec, 0, seed=0)
    while len(learner.replay) < 256:
        learner.add(actor.collect(16))
    actor.close()
    return learner


def twins(learner: Learner, capture: bool):
    """An eager copy (the learner's own update, inlined) and a graphed copy, same start."""
    lc = learner.config.learner
    online = copy.deepcopy(learner.online)
    target = copy.deepcopy(learner.target)
    opt = make_adam(online.parameters(), lc.lr, lc.adam_eps, learner.device)

    def eager(batch, weights):
        loss, extras = dqn_loss(online, target, *batch, double=True, kind="huber",
                                weights=weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(online.parameters(), 10.0)
        opt.step()
        return loss, extras

    g_online, g_target = copy.deepcopy(learner.online), copy.deepcopy(learner.target)
    g_opt = make_adam(g_online.parameters(), lc.lr, lc.adam_eps, learner.device)
    graphed = GraphedUpdate(g_online, g_target, g_opt, double=True, kind="huber",
                            grad_clip=10.0, capture=capture)
    return (online, opt, eager), (g_online, g_opt, graphed)


def assert_same_training(learner: Learner, capture: bool, updates: int = 12) -> None:
    """Both copies update on the same batches (and, for noisy nets, the same noise: the
    same seed before each update)."""
    (online, _, eager), (g_online, _, graphed) = twins(learner, capture)
    for k in range(updates):
        batch, _, weights = learner.replay.sample(32)
        torch.manual_seed(k)
        loss, extras = eager(batch, weights)
        torch.manual_seed(k)
        g_loss, g_extras, skipped = graphed(batch, weights)
        assert float(skipped) == 0.0
        torch.testing.assert_close(g_loss, loss)
        torch.testing.assert_close(g_extras["td_abs"], extras["td_abs"])
    for p, q in zip(online.parameters(), g_online.parameters(), strict=True):
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
    learner.step()
    state = learner.state_dict()
    for group in state["optimizer"]["param_groups"]:
        group["capturable"] = True  # as a CUDA-graphed learner saves it
    restored = filled_learner()
    restored.load_state_dict(state)
    assert all(not g["capturable"] for g in restored.optimizer.param_groups)
    restored.step()
    assert restored.updates == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to capture")
@pytest.mark.parametrize("head", [[], C51, QR], ids=["expected", "c51", "qr"])
def test_the_captured_graph_trains_as_the_eager_update_on_a_gpu(head):
    learner = filled_learner("cuda", head)
    assert_same_training(learner, capture=True, updates=20)
    for _ in range(5):  # and the learner itself takes the graphed path
        learner.step()
    assert learner.updates == 5 and learner._graphed is not None
    assert learner._graphed._graph is not None
