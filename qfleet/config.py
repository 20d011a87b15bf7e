"""The run configuration: one typed, frozen schema, loaded from YAML with dotted overrides.

Everything a run can vary lives here and is validated once, before Ray starts, so a typo
costs a second and one clear line rather than a dead cluster job. Code deeper in reads
these objects, never raw dicts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from qfleet.errors import ConfigError
from qfleet.presets import resolve


class _Section(BaseModel):
    # use_attribute_docstrings: the string under each field is its `description`, from
    # which `qfleet.configref` generates the config reference (`qfleet config KEY`).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False,
                              use_attribute_docstrings=True)


class EnvConfig(_Section):
    """The environment the actors and the evaluation play, and its Atari preprocessing
    (84×84 grayscale, frame skip 4 with max-pooling, frame stack, no-op starts)."""

    id: str = "CartPole-v1"
    """A Gymnasium id, `module:EnvName-v0` (the module registers it), or `module:attr` (a
    `gymnasium.Env` class or a factory). `ALE/<Game>-v5` and `<Game>NoFrameskip-v4` ids get
    the standard DQN Atari preprocessing."""
    kwargs: dict[str, Any] = {}
    """Keyword arguments for `gym.make`, or for the `module:attr` class or factory."""
    imports: list[str] = []
    """Modules imported in the driver and in every worker before an env is made (packages
    that register their own ids)."""
    seed: int = 0
    """Base seed of the run: the learner seeds torch with it, and each actor derives its
    envs' and exploration's seeds from it and its own index (evaluation has its own)."""
    clip_rewards: bool | None = None
    """Clip rewards to [-1, 1] for the loss (returns are reported raw); default: on for ALE."""
    frame_stack: int = Field(4, ge=1, le=16)
    """ALE: frames stacked into one observation (the CNN's input channels)."""
    noop_max: int = Field(30, ge=0)
    """ALE: up to this many no-op actions at the start of each training episode
    (evaluation follows `eval.protocol`)."""
    sticky_actions: float | None = Field(None, ge=0.0, le=1.0)
    """Repeat-action probability; default: 0.25 for `-v5` ALE ids (Machado et al. 2018), else 0."""
    episodic_life: bool = False
    """ALE: a life lost ends the training episode (never an evaluation episode)."""
    max_episode_steps: int | None = Field(None, ge=1)
    """Time limit of a training episode in agent steps (a truncation, which still
    bootstraps); none: the env's own (ALE: 108,000 frames)."""
    env_threads: int = Field(0, ge=0)
    """ALE emulator threads per actor; 0 = 1 when its envs run in batches, else 2."""


class NetworkConfig(_Section):
    """The Q-network, shared by the learner, the actors' acting copies and the
    evaluation."""

    kind: Literal["auto", "mlp", "nature_cnn"] = "auto"
    """`mlp` (layers of `hidden` units), `nature_cnn` (Mnih et al. 2015, for (C, 84, 84)
    observations), or `auto`: the Nature CNN for image observations, the MLP otherwise."""
    hidden: tuple[int, ...] = (64, 64)
    """MLP hidden layer sizes, input to output (the Nature CNN has its own)."""
    dueling: bool = False
    """Dueling head (Wang et al. 2016): Q = V + A − mean(A), per atom under a
    distributional head."""
    noisy: bool = False
    """Noisy nets (Fortunato et al. 2018): every linear layer (not the convolutions)
    factorised-Gaussian noisy, redrawn by the actors every vector step and by the learner
    every update;
    exploration without ε (`actors.epsilon: none`), or beside it."""
    noisy_sigma0: float = Field(0.5, gt=0.0)
    """σ₀ of the noisy layers' initial noise scale σ = σ₀/√fan-in."""

    @model_validator(mode="after")
    def _check_hidden(self) -> NetworkConfig:
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError("hidden: needs one or more positive layer sizes")
        return self


class ActorsConfig(_Section):
    """The fleet: Ray actors, each stepping a vector of envs with its acting copy
    of the Q-network, exploring, and streaming n-step transitions to the learner."""

    num_actors: int | Literal["auto"] = 2
    """Ray actors, each with its own vector of envs; more than the cluster holds are asked
    of Ray's autoscaler. `auto`: as many as the cluster's free CPUs hold, growing as nodes
    join; with an autoscaler and `max_actors` set, `max_actors` asked of the autoscaler."""
    max_actors: int | None = Field(None, ge=1, le=4096)
    """Ceiling for an `auto` fleet (default: 4× the actors that fit at start)."""
    scale_timeout_s: float = Field(600.0, gt=0)
    """How long a fleet that needs more nodes waits without a new actor starting (the
    learner up): then, with an autoscaler, a fixed fleet ends the run; an `auto` one, or
    one without an autoscaler, runs with what it has."""
    resources: dict[str, float] = {}
    """Extra Ray resources each actor needs, e.g. a custom `{actor_node: 1}` label."""
    envs_per_actor: int = Field(8, ge=1, le=1024)
    """Envs per actor, stepped together with one batched forward pass per vector step."""
    epsilon: Literal["apex", "linear", "none"] = "apex"
    """`apex`: each env a fixed ε_i = ε^(1+α·i/(N−1)), N every env the fleet may ever run
    (`max_actors` × `envs_per_actor` when elastic), places dealt so that any first few
    actors span the whole schedule; `linear`: one ε for all, decaying over the fleet's env
    steps; `none`: greedy (with `network.noisy`, the noise explores)."""
    apex_epsilon: float = Field(0.4, gt=0.0, le=1.0)
    """`apex`: the base ε of the schedule (the most exploring env's ε)."""
    apex_alpha: float = Field(7.0, ge=0.0)
    """`apex`: the exponent α spreading ε over the envs (0: every env at `apex_epsilon`)."""
    epsilon_start: float = Field(1.0, ge=0.0, le=1.0)
    """`linear`: ε at the start."""
    epsilon_end: float = Field(0.05, ge=0.0, le=1.0)
    """`linear`: ε after `epsilon_decay_steps`, kept for the rest of the run."""
    epsilon_decay_steps: int = Field(10_000, ge=1)
    """Fleet env steps over which the linear ε decays."""
    epsilon_hold_steps: int = Field(0, ge=0)
    """Fleet env steps the linear ε stays at `epsilon_start` before it decays (Dopamine's
    schedule holds it through the replay's warm-up)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where each actor's acting copy of the Q-network runs. `cuda`: on a share of its
    node's GPU (`num_gpus`), one CUDA graph per batch, so the actor's core only emulates.
    `auto`: `cuda` when no autoscaler adds nodes and every node that can host an actor
    has a GPU with room beside the learner (on one GPU: `learner.num_gpus` below 1), else
    `cpu`."""
    num_gpus: float | None = Field(None, gt=0.0, le=1.0)
    """The GPU share each actor holds with `device: cuda` (Ray's accounting: the GPU is
    shared in time). None: the room the learner leaves, split over the fleet."""
    inference_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Precision of the actors' acting copy of the Q-network (learning and greedy
    evaluation stay float32). `auto`: on a CPU, bfloat16 for pixel networks where it runs
    faster (measured at actor start); else float32."""
    env_groups: int = Field(0, ge=0, le=64)
    """Batches an Atari actor's envs run in, so inference overlaps emulation; 0 = 2,
    1 = lockstep."""
    chunk_steps: int = Field(16, ge=1)
    """Vector steps per chunk sent to the learner (chunk = steps × envs transitions)."""
    max_in_flight: int = Field(2, ge=1, le=64)
    """Chunks an actor may have unacknowledged by the learner: the backpressure bound."""
    num_cpus: float = Field(1.0, gt=0.0)
    """Ray CPUs each actor holds: with the node's CPUs, how many actors fit on a node."""
    max_restarts: int = Field(5, ge=0)
    """Restarts of one actor within `restart_window_s` after which the run stops, quoting
    the actor's own error (an env that raises at every reset, say)."""
    restart_window_s: float = Field(300.0, gt=0)
    """The window over which an actor's restarts are counted; each restart inside it waits
    twice as long as the one before (from 0.5 s up to 30 s)."""

    @field_validator("num_actors")
    @classmethod
    def _check_count(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 4096:
            raise ValueError("expected 1..4096 or auto")
        return value

    @property
    def fleet_size(self) -> int:
        """The most actors this fleet may ever run (an elastic one grows to `max_actors`)."""
        fixed = self.num_actors if isinstance(self.num_actors, int) else 1
        return max(self.max_actors or fixed, fixed)

    @property
    def stream_slots(self) -> int:
        """Env streams the learner must tell apart: every env the fleet may ever run."""
        return self.fleet_size * self.envs_per_actor


class LearnerConfig(_Section):
    """The one learner: it holds the replay, samples batches, takes Adam steps on the TD
    loss, keeps the target network and publishes weights to the actors."""

    lr: float = Field(1e-4, gt=0.0, le=1.0)
    """Adam's learning rate."""
    adam_eps: float = Field(1.5e-4, gt=0.0)
    """Adam's ε, added to the denominator of each step: larger values damp the steps of
    weights whose gradients are small."""
    batch_size: int = Field(32, ge=1, le=65536)
    """Transitions per gradient update; with a replay, at most `replay.capacity`."""
    gamma: float = Field(0.99, ge=0.0, le=1.0)
    """Discount per env step; an n-step target bootstraps with γ^n."""
    n_step: int = Field(1, ge=1, le=100)
    """Rewards summed (discounted) by the actors before the target bootstraps; an episode's
    end cuts the sum short."""
    loss: Literal["mse", "huber"] = "mse"
    """`mse` (squared, the course's) or `huber`, of the expected-value TD error (a
    distributional learner has its own loss)."""
    distribution: Literal["none", "c51", "qr"] = "none"
    """The value head: `none`, the expected Q; `c51` (Bellemare et al. 2017), a categorical
    distribution on `atoms` fixed points of [`v_min`, `v_max`], the n-step target
    projected onto them, cross-entropy loss (and priority); `qr` (Dabney et al. 2018),
    `atoms` quantiles, quantile Huber loss (κ = 1)."""
    atoms: int = Field(51, ge=2, le=1024)
    """Support points (`c51`) or quantiles (`qr`)."""
    v_min: float = -10.0
    """`c51`: the support's lowest return (returns are clipped rewards for Atari)."""
    v_max: float = 10.0
    """`c51`: the support's highest return."""
    double_dqn: bool = False
    """Double DQN (van Hasselt et al. 2016): the online network picks the next action, the
    target network values it."""
    target_update: Literal["none", "hard", "polyak"] = "hard"
    """`hard`: copy the online network every `target_update_every` updates; `polyak`: move
    it by `tau` every update; `none`: bootstrap from the online network (the course's
    barebone DQN)."""
    target_update_every: int = Field(1000, ge=1)
    """Updates between hard target syncs."""
    tau: float = Field(0.005, gt=0.0, le=1.0)
    """`polyak`: target ← target + τ·(online − target) after every update."""
    grad_clip: float | None = Field(None, gt=0.0)
    """Largest global L2 norm of the gradient (clipped to it before each Adam step); none:
    no clipping."""
    replay_ratio: float | None = Field(None, gt=0.0)
    """Target (updates × batch_size) / transitions: the learner waits when ahead of it;
    none = learn as fast as possible."""
    throttle_actors: bool = True
    """With `replay_ratio`: slow the actors when the learner falls behind (else the learner
    only waits when it is ahead)."""
    publish_every: int = Field(10, ge=1)
    """Updates between weight publishes to the actors."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the learner (and the replay) lives. `auto`: it is given a `num_gpus` share when
    the cluster has a GPU, and runs on `cuda` if its torch then sees one, else on `cpu`;
    `cuda` is refused at start when there is no GPU."""
    num_gpus: float = Field(1.0, gt=0.0, le=1.0)
    """The share of a GPU the learner holds when it runs on one: below 1, several learners
    (the trials of a sweep) share a GPU."""
    num_threads: int = Field(1, ge=1)
    """torch's threads in the learner's process (a CPU learner's update); Ray reserves one
    CPU for the learner whatever this says."""
    cuda_graph: bool = True
    """On a GPU, replay each update (loss, backward, clipping, Adam) as one CUDA graph: the
    eager update is bound by the host launching its kernels. No effect on a CPU."""
    inbox_chunks: int = Field(8, ge=1)
    """Chunks the learner queues before `add` blocks the sending actors (backpressure)."""
    resources: dict[str, float] = {}
    """Extra Ray resources the learner needs, e.g. `{"qfleet_learner": 1}` (the cluster
    files' GPU head) or `{"node:__internal_head__": 0.01}` (any head)."""
    max_nonfinite: int = Field(100, ge=1)
    """Consecutive NaN/inf losses (each update skipped) after which the run stops."""
    max_restarts: int = Field(3, ge=0)
    """Times a lost learner (process killed, out of memory, node gone) is restarted from the
    newest checkpoint before the run stops."""
    start_timeout_s: float = Field(600.0, gt=0)
    """Seconds a (re)started learner may take to come up, placement included: long enough
    for an autoscaler to bring a GPU node."""


class ReplayConfig(_Section):
    """The replay: a ring of transitions on the learner's device, sampled uniformly or by
    priority."""

    kind: Literal["uniform", "prioritized", "none"] = "uniform"
    """`uniform`; `prioritized` (proportional, Schaul et al. 2016); `none`: no replay,
    learn on each streamed transition once, in arrival order."""
    alpha: float = Field(0.6, ge=0.0, le=1.0)
    """Prioritized: P(i) ∝ p_i^α, p_i the transition's last |TD error| (a distributional
    learner's loss) plus a small ε, new ones at the highest p so far; 0 is uniform."""
    beta0: float = Field(0.4, ge=0.0, le=1.0)
    """Prioritized: importance-sampling exponent at the start, annealed to 1."""
    beta_steps: int = Field(100_000, ge=1)
    """Prioritized: learner updates over which β rises linearly to 1."""
    save_on_exit: bool = True
    """Save the replay's contents at the end of a run (when the disk has room for twice its
    size), so that `--resume` continues with them instead of an empty replay."""
    save_with_checkpoints: bool = False
    """Also save it with every periodic checkpoint, so a resume after a crash (learner,
    driver or machine) and a restarted learner get it too; costs writing the whole replay
    at every checkpoint."""
    capacity: int = Field(100_000, ge=1)
    """Transitions kept, the oldest overwritten; refused at start when they would not fit
    in the learner device's free memory (Atari frames are stored once)."""
    min_size: int = Field(1000, ge=1)
    """Transitions stored before learning starts (warm-up); at most `capacity`. Ignored by
    `kind: none`."""


class StopConfig(_Section):
    """When the run ends: at the first limit reached; at least one must be set. A `stop`
    section, once given, replaces the default whole: the limits it leaves out are none."""

    env_steps: int | None = Field(None, ge=1)
    """Env steps over the whole fleet (every env's step counts; a resumed run's count
    goes on from its checkpoint)."""
    time_s: float | None = Field(None, gt=0)
    """Seconds of training, counted from when the learner and the actors are up (a sweep
    trial counts its checkpoint lineage's time too)."""
    target_return: float | None = None
    """Stop when the greedy evaluation mean reaches this."""

    @model_validator(mode="after")
    def _one_limit(self) -> StopConfig:
        if self.env_steps is None and self.time_s is None and self.target_return is None:
            raise ValueError("set at least one of env_steps, time_s, target_return")
        return self


class EvalConfig(_Section):
    """Greedy evaluation of the learner's weights, run beside training (never blocking
    it); its mean return is what `stop.target_return` is compared with."""

    every_s: float = Field(30.0, gt=0)
    """Seconds between evaluations (one is never started while another runs)."""
    episodes: int = Field(10, ge=1, le=1000)
    """Episodes per evaluation, played side by side, each in its own env."""
    epsilon: float = Field(0.001, ge=0.0, le=1.0)
    """Random-action probability of the evaluation (0.001: Machado et al. 2018)."""
    protocol: Literal["sticky", "noop30"] = "sticky"
    """Atari evaluation: `sticky` (Machado et al. 2018: sticky actions 0.25, no no-op
    starts) or `noop30` (the DQN-era tables: no sticky actions, up to 30 no-op starts)."""
    max_episode_steps: int = Field(27_000, ge=1)
    """Agent steps an evaluation episode may last (27,000 = 108,000 Atari frames)."""
    final_time_s: float = Field(300.0, gt=0)
    """Wall-clock seconds the evaluation of the final weights (after a budget ends the run)
    may take: a barely trained agent can play every episode to `max_episode_steps`.
    Episodes still running then are cut short, counted in `summary.json`
    (`eval_episodes_cut`) and left out of the mean."""
    noisy: bool = True
    """With noisy nets: evaluate the noisy network, `epsilon` on top (Rainbow's paper), or
    its mean path (false: Dopamine's evaluation, which DER's and BBF's Atari 100k scores
    were measured under)."""
    video_every_s: float | None = Field(None, gt=0)
    """Record one greedy episode this often, to TensorBoard and `videos/` (none: never)."""


class LogConfig(_Section):
    """The console, and the checkpoints in the run directory."""

    console_every_s: float = Field(5.0, gt=0)
    """Seconds between status lines when the output is not a terminal (a terminal gets a
    live progress line)."""
    episode_every_s: float = Field(2.0, gt=0)
    """At most one episode line per this many seconds (the rest are counted)."""
    checkpoint_every_updates: int = Field(10_000, ge=1)
    """Learner updates between periodic checkpoints (`checkpoints/ckpt-<updates>.pt`)."""
    keep_checkpoints: int = Field(3, ge=1)
    """Newest checkpoints kept in the run directory; older ones are deleted."""


class Config(_Section):
    """A whole run: one section per part of the pipeline; every key is optional."""

    env: EnvConfig = EnvConfig()
    """The environment and its preprocessing."""
    network: NetworkConfig = NetworkConfig()
    """The Q-network's architecture."""
    actors: ActorsConfig = ActorsConfig()
    """The actor fleet: size, placement, exploration, streaming."""
    learner: LearnerConfig = LearnerConfig()
    """The learner: optimizer, loss, target network, pace, placement."""
    replay: ReplayConfig = ReplayConfig()
    """The replay buffer: kind, size, priorities, persistence."""
    stop: StopConfig = StopConfig(time_s=600)
    """When the run ends."""
    eval: EvalConfig = EvalConfig()
    """The greedy evaluation beside training."""
    log: LogConfig = LogConfig()
    """Console output and checkpoints."""

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        if self.learner.distribution == "c51" and self.learner.v_min >= self.learner.v_max:
            raise ValueError(f"learner.v_min ({self.learner.v_min:g}) must be below "
                             f"learner.v_max ({self.learner.v_max:g})")
        if self.replay.kind != "none" and self.replay.min_size > self.replay.capacity:
            raise ValueError(
                f"replay.min_size ({self.replay.min_size}) exceeds replay.capacity "
                f"({self.replay.capacity})"
            )
        if self.replay.kind != "none" and self.learner.batch_size > self.replay.capacity:
            raise ValueError("learner.batch_size exceeds replay.capacity")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples), for YAML, JSON and checkpoints."""
        return self.model_dump(mode="json")


_UNION_MEMBER = {"int": "an integer", "float": "a number", "str": "a string",
                 "bool": "true/false", "dict[str,float]": "a mapping"}


def _member(tag: object) -> str | None:
    """Pydantic tags each member of a union in the error location; name them for people."""
    tag = str(tag)
    if tag in _UNION_MEMBER:
        return _UNION_MEMBER[tag]
    if tag.startswith("literal["):
        return tag[len("literal["):-1]
    return None


def _format_error(err: ValidationError) -> str:
    errors = err.errors()
    first = errors[0]
    loc = list(first["loc"])
    if loc and _member(loc[-1]) is not None:
        # A value matching no member of a union (`4` or `auto`): one line for the field.
        same = [e for e in errors if list(e["loc"][:-1]) == loc[:-1]]
        options = " or ".join(dict.fromkeys(m for e in same if (m := _member(e["loc"][-1]))))
        text = f"{'.'.join(map(str, loc[:-1]))}: expected {options} (got {first['input']!r})"
        extra = len(errors) - len(same)
        return text + (f" (and {extra} more)" if extra else "")
    where = ".".join(str(p) for p in loc)
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    msg = msg.removeprefix("Value error, ")
    text = f"{where}: {msg}" if where else msg
    if first["type"] not in ("extra_forbidden", "missing") and "input" in first:
        given = first["input"]
        if not isinstance(given, dict):
            text += f" (got {given!r})"
    extra = len(errors) - 1
    return text + (f" (and {extra} more)" if extra else "")


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set `section.key=value` in raw config data; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected section.key=value")
    path, raw = override.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    try:
        set_key(data, path.strip(), value)
    except ConfigError as err:
        raise ConfigError(f"override {override!r}: {err}") from None


def set_key(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `section.key` (or deeper, inside a mapping such as `env.kwargs`) in raw config
    data."""
    keys = dotted.split(".")
    if len(keys) < 2 or not all(keys):
        raise ConfigError("expected section.key=value")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key} is not a section")
        node = child
    node[keys[-1]] = value


def config_from_dict(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML file (or start from defaults), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = resolve(path)  # `configs/NAME.yaml` is the shipped one where no such file is here
        loaded = read_yaml(p, "config", repr(str(path)))
        if loaded is None:
            raise ConfigError(f"config {str(p)!r} is empty: give at least a `stop` section "
                              "(see configs/)")
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {str(p)!r}: expected a mapping of sections at the top")
        data = loaded
    for override in overrides:
        apply_override(data, override)
    return config_from_dict(data)


def read_yaml(path: Path, what: str, name: str) -> Any:
    """A YAML file's data; unreadable or invalid YAML is one `ConfigError` line that says
    `what` the file is, under `name`, and where the YAML broke."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {err.strerror or err}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{what} {name}{where}: {problem}") from None


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
