"""Imagined rollouts: the policy acting in the learned dynamics ensemble, all rollouts of a
batch stepped together, with the model-side reward and termination of appendix F.

Every random number of a rollout (start states, policy noise, members, restart states) is drawn
from the generator before the loop, so one step is a pure function of the state and that
step's draws: no host sync, no data-dependent Python branch (`make_step`). The loop runs it
eagerly, compiled (torch.compile) or, on CUDA, captured once and replayed as a CUDA graph
(`ROLLOUT_ENGINES`, config `trpo.rollout_engine`). BREMEN's sampler (`imagine(batch_size=...)`)
runs until enough paths are complete: one host read per chunk of steps, none per step."""
from __future__ import annotations

import sys
from typing import Callable, Sequence

import torch

from algos.config import ROLLOUT_ENGINES
from envs import model_side

MEMBER_CHOICES = ("per_step", "per_rollout", "per_transition")
# imagine(batch_size=...): after the first chunk (the earliest step the batch can be full), the
# lanes run in chunks of ceil(horizon / this) steps, one host read each; the numbers do not depend on it
CHUNKS_PER_HORIZON = 8


def gaussian_sampler(policy, std: float | None = None) -> Callable:
    """policy_sample for `imagine`: a = mean(s) + std * noise with the policy's own std
    (`policy.distribution(obs) -> (mean, log_std)`), or a fixed `std` (BREMEN samples with
    N(0, 0.1^2) around the mean)."""
    def sample(obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        mean, log_std = policy.distribution(obs)
        return mean + (log_std.exp() if std is None else std) * noise
    return sample


def make_step(dynamics, policy_sample: Callable, start_states: torch.Tensor, candidates: torch.Tensor,
              member_choice: str, restart: bool, reward_fn: Callable, termination_fn: Callable,
              clip_obs: tuple[torch.Tensor, torch.Tensor] | None, max_path_length: int | None = None) -> Callable:
    """One imagined step for all lanes, a pure function of tensors:

        step(state, noise [N, act_dim], draw, restart_idx [N]) -> (record, new_state)

    state: obs [N, obs_dim], timestep [N] long, member [N] long (the lane's member, per_rollout),
    alive [N] float. draw: the step's index into `candidates`, [] for per_step (one member for
    all lanes), [N] otherwise (per_transition: this step's member; per_rollout: the member of a
    lane that restarts). record: the [N] slices of imagine's outputs at this step.
    max_path_length (restart only): a lane whose path reaches this many steps restarts too
    (BREMEN's VecSimpleEnv, envs/neural_env.py:119)."""
    def step(state: dict, noise: torch.Tensor, draw: torch.Tensor, restart_idx: torch.Tensor):
        obs, alive = state["obs"], state["alive"]
        act = policy_sample(obs, noise)
        act_clipped = act.clamp(-1.0, 1.0)
        if member_choice == "per_step":  # one member for the batch: only its weights are used
            chosen = candidates.index_select(0, draw.reshape(1)).reshape(())  # 0-dim: no int() sync
            next_obs = dynamics.predict(obs, act_clipped, member=chosen).next_obs[0]
            member = chosen.expand(obs.shape[0])
        else:
            member = state["member"] if member_choice == "per_rollout" else candidates[draw]
            next_obs = dynamics.predict(obs, act_clipped, member=member).next_obs
        if clip_obs is not None:
            next_obs = torch.maximum(torch.minimum(next_obs, clip_obs[1]), clip_obs[0])
        if not restart:  # a terminated lane stays frozen at its terminal state, masked
            next_obs = torch.where(alive[:, None] > 0, next_obs, obs)
        rew = reward_fn(obs, act_clipped, next_obs)
        terminated = termination_fn(obs, act_clipped, next_obs)
        if not restart:
            rew, terminated = rew * alive, terminated & (alive > 0)
        record = {"obs": obs, "act": act, "rew": rew, "next_obs": next_obs, "terminated": terminated,
                  "timestep": state["timestep"], "member": member, "alive": alive}
        if restart:  # BREMEN's sampler: a finished path restarts from a fresh start state
            ended = terminated if max_path_length is None else terminated | (state["timestep"] >= max_path_length - 1)
            new_state = {"obs": torch.where(ended[:, None], start_states[restart_idx], next_obs),
                         "timestep": torch.where(ended, 0, state["timestep"] + 1),
                         "member": (torch.where(ended, candidates[draw], state["member"])
                                    if member_choice == "per_rollout" else state["member"]),
                         "alive": alive}
        else:
            new_state = {"obs": next_obs, "timestep": state["timestep"] + 1, "member": state["member"],
                         "alive": alive * (~terminated).to(alive.dtype)}
        return record, new_state
    return step


def _advance(step: Callable, state: dict, draws: dict, out: dict, t: torch.Tensor) -> None:
    """Step t (a device scalar [1]) in place: read the step's draws, write its record into the
    [T, N] outputs, update the state, t += 1. Fixed addresses throughout, so it can be captured."""
    record, new_state = step(state, draws["noise"].index_select(0, t)[0], draws["member"].index_select(0, t)[0],
                             draws["restart"].index_select(0, t)[0])
    for key, value in record.items():
        out[key].index_copy_(0, t, value.unsqueeze(0))
    for key, value in new_state.items():
        state[key].copy_(value)
    t.add_(1)


# The compiled engine in this process: `advance` the compiled step (made at first use), `fallback`
# the reason it fell back to eager (torch.compile failed: no C++ compiler, say); `used` the engine
# of the process's latest `imagine` (provenance.json).
COMPILED = {"advance": None, "fallback": None, "used": None}


def _run(engine: str, step: Callable, state: dict, draws: dict, out: dict, horizon: int) -> None:
    t = torch.zeros(1, dtype=torch.long, device=state["obs"].device)
    if engine == "compiled":  # one compiled graph per step (CPU: fused C++; CUDA: Triton)
        done = _run_compiled(step, state, draws, out, t, horizon)
        for _ in range(horizon - done):
            _advance(step, state, draws, out, t)
    elif engine == "eager":
        for _ in range(horizon):
            _advance(step, state, draws, out, t)
    else:  # cuda_graph: step 0 runs for real (warm-up), then one captured step replays
        _run_captured(lambda: _advance(step, state, draws, out, t), state, out, t, horizon)


def _run_compiled(step: Callable, state: dict, draws: dict, out: dict, t: torch.Tensor, horizon: int) -> int:
    """Steps the compiled step; returns how many ran. A compilation that fails (at the first step
    or at a recompile for a new shape) changes nothing (dynamo compiles before it runs): the
    process then falls back to eager (one line on stderr, `engine_fallback()` in provenance.json)
    and the caller runs the remaining steps eagerly."""
    done = 0
    if COMPILED["fallback"] is not None:
        return done
    try:
        if COMPILED["advance"] is None:
            COMPILED["advance"] = torch.compile(_advance, fullgraph=True)
        for done in range(horizon):
            COMPILED["advance"](step, state, draws, out, t)
        return horizon
    except Exception as err:  # noqa: BLE001 - any failure to compile: eager is the reference
        COMPILED["fallback"] = f"compile failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        print(f"rollout engine compiled: {COMPILED['fallback']}; falling back to eager for the rest of this run "
              f"(recorded in provenance.json)", file=sys.stderr, flush=True)
        return done


def capture_cuda_graph(advance: Callable[[], None]) -> Callable[[], None]:
    """`advance()` once for real on a side stream (the warm-up a capture needs), then captured
    once; returns the graph's replay (one more step per call)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        advance()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        advance()
    return graph.replay


# The cuda_graph engine in this process: `capture` makes the replay (a test injects its own),
# `checked` once a captured step agreed with eager, `fallback` the reason it fell back to eager.
GRAPH = {"capture": capture_cuda_graph, "checked": False, "fallback": None}
# "Beyond rounding": captured and eager kernels may sum in another order, never differ more than this.
GRAPH_RTOL, GRAPH_ATOL = 1e-4, 1e-5


def engine_used() -> str | None:
    """The engine the process's latest `imagine` resolved to (None before the first)."""
    return COMPILED["used"]


def engine_fallback() -> str | None:
    """Why this process runs the cuda_graph or compiled engine eagerly (one line), or None."""
    return GRAPH["fallback"] or COMPILED["fallback"]


def _run_captured(advance: Callable[[], None], state: dict, out: dict, t: torch.Tensor, horizon: int) -> None:
    """The cuda_graph engine. Before the process's first replay, the captured step is compared with
    an eager step on the same inputs; an error or a difference beyond rounding makes the process
    fall back to eager (one line on stderr, `engine_fallback()` in provenance.json): the rollout
    starts again from its first step, eagerly."""
    if GRAPH["fallback"] is None and horizon > 1:
        start = _copy(state, t)
        try:
            replay = GRAPH["capture"](advance)  # step 0 for real, then step 1 captured
            if not GRAPH["checked"]:
                _check_replay(replay, advance, state, out, t)
                GRAPH["checked"] = True
            for _ in range(horizon - 1):
                replay()
            return
        except Exception as err:  # noqa: BLE001 - any failure of the captured engine: eager is the reference
            GRAPH["fallback"] = str(err).splitlines()[0] if isinstance(err, GraphMismatch) else \
                f"capture failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            print(f"rollout engine cuda_graph: {GRAPH['fallback']}; falling back to eager for the rest of this run "
                  f"(recorded in provenance.json)", file=sys.stderr, flush=True)
            _restore(state, t, start)
    for _ in range(horizon):
        advance()


class GraphMismatch(RuntimeError):
    """A captured step that differs from eager beyond rounding."""


def _check_replay(replay: Callable[[], None], advance: Callable[[], None], state: dict, out: dict,
                  t: torch.Tensor) -> None:
    """Step 1 replayed and step 1 eager from the same state must agree up to rounding; the state
    is left at step 1's start (the replays then run as if unchecked)."""
    at_step_1 = _copy(state, t)
    results = []
    for run_step in (replay, advance):
        _restore(state, t, at_step_1)
        run_step()
        results.append({**{f"state {k}": v.clone() for k, v in state.items()},
                        **{k: v[1].clone() for k, v in out.items()}})
    _restore(state, t, at_step_1)
    for key, captured in results[0].items():
        eager = results[1][key]
        same = (torch.allclose(captured, eager, rtol=GRAPH_RTOL, atol=GRAPH_ATOL, equal_nan=True)
                if captured.is_floating_point() else torch.equal(captured, eager))
        if not same:
            diff = (captured.double() - eager.double()).abs().nan_to_num(float("inf")).max().item()
            raise GraphMismatch(f"a captured step differs from eager beyond rounding ({key}: max |difference| "
                                f"{diff:.3g})")


def _copy(state: dict, t: torch.Tensor) -> tuple[dict, torch.Tensor]:
    return {k: v.clone() for k, v in state.items()}, t.clone()


def _restore(state: dict, t: torch.Tensor, copy: tuple[dict, torch.Tensor]) -> None:
    """In place: a captured graph reads and writes these very tensors."""
    for k, v in copy[0].items():
        state[k].copy_(v)
    t.copy_(copy[1])


# auto on the CPU compiles the step when the run takes at least this many imagined steps in
# sequence (deployments x TRPO iterations x rollout_length): compiling costs about a minute per
# process and saves 0.1-0.6 ms per step (bench/medium_engine.json, bench/results.json); rule in
# docs/paper_to_code.md, "The rollout engine on the CPU".
AUTO_COMPILE_MIN_STEPS = 1_000_000


def resolve_engine(engine: str, device: torch.device, sequential_steps: int | None = None) -> str:
    """auto: a captured CUDA graph on CUDA; on the CPU, compiled for a run of at least
    AUTO_COMPILE_MIN_STEPS `sequential_steps`, eager otherwise (and when they are not given)."""
    if engine not in ROLLOUT_ENGINES:
        raise ValueError(f"rollout engine must be one of {ROLLOUT_ENGINES}, got {engine!r}")
    if engine == "auto":
        if device.type == "cuda":
            return "cuda_graph"
        return "compiled" if (sequential_steps or 0) >= AUTO_COMPILE_MIN_STEPS else "eager"
    if engine == "cuda_graph" and device.type != "cuda":
        raise ValueError(f"rollout engine cuda_graph needs a CUDA device, got {device}; use auto, eager or compiled")
    return engine


def _run_until_batch(engine: str, step: Callable, state: dict, draws: dict, out: dict, horizon: int,
                     batch_size: int) -> int:
    """BREMEN's stop rule (libs/samplers/vectorized_sampler.py:53,85-94): step every lane until
    the paths completed so far hold >= batch_size steps, tested after each step, so every path
    completing in that step counts. A path ends at a termination or at `horizon` steps. Here
    the steps run in chunks (`_run` on views of the draws and outputs), the test is read once per
    chunk; returns the number of steps up to the one that filled the batch."""
    total, n_lanes = out["timestep"].shape
    done, chunk = 0, -(-batch_size // n_lanes)  # the batch cannot be full before this step
    while True:
        end = min(done + chunk, total)
        _run(engine, step, state, {k: v[done:end] for k, v in draws.items()},
             {k: v[done:end] for k, v in out.items()}, end - done)
        ends = out["terminated"][:end] | (out["timestep"][:end] == horizon - 1)
        completed = torch.where(ends, out["timestep"][:end] + 1, 0).sum(1).cumsum(0)
        short = int((completed < batch_size).sum())  # the chunk's one host read
        if short < end:
            return short + 1
        if end == total:
            raise RuntimeError(f"{total} steps completed only {int(completed[-1])} < {batch_size} samples")
        done, chunk = end, -(-horizon // CHUNKS_PER_HORIZON)


@torch.no_grad()
def imagine(dynamics, policy_sample: Callable, start_states: torch.Tensor, n_rollouts: int, horizon: int,
            env_name: str, generator: torch.Generator | None, *, member_choice: str,
            members: Sequence[int] | torch.Tensor | None = None, clip_obs: tuple | None = None,
            label_fn: Callable | None = None, reward_fn: Callable | None = None,
            termination_fn: Callable | None = None, restart: bool = True,
            engine: str = "auto", run_steps: int | None = None,
            batch_size: int | None = None) -> dict[str, torch.Tensor]:
    """Roll `policy_sample` out in `dynamics`: n_rollouts lanes, `horizon` steps each.

    - start_states [S, obs_dim]: the pool on the device; each lane starts from a state drawn
      uniformly from it.
    - restart=True: a lane whose step terminates (model termination) starts the NEXT step from a
      fresh state drawn from the pool (BREMEN's sampler, envs/neural_env.py:118-121 resets a done
      path and sampling goes on), so every [t, n] entry is a real sample and the batch holds
      exactly n_rollouts x horizon samples. restart=False: a terminated lane stays frozen at its
      terminal state, later steps masked (alive = 0, rew = 0, terminated = False).
    - policy_sample(obs [N, obs_dim], noise [N, act_dim]) -> actions [N, act_dim], unclipped;
      noise ~ N(0, I) is drawn here (`gaussian_sampler(policy)` makes one from a policy). The
      model and the reward see the action clipped to [-1, 1]; `act` stores the unclipped one.
      dynamics.act_dim sizes the noise.
    - member_choice: "per_step": one member drawn at every step for ALL lanes (BREMEN's code);
      "per_rollout": each lane keeps the member drawn at its (re)start; "per_transition": a member
      per lane per step (MOPO's random elite). `members` restricts the candidates (a list or a
      device tensor, e.g. one member drawn per TRPO iteration; default: all members).
    - reward / termination: envs.model_side.model_reward / model_termination(env_name, s,
      a_clipped, s') unless reward_fn / termination_fn(s, a_clipped, s') are given.
    - clip_obs=(low, high): predicted states are clamped into this box.
    - label_fn(flat_obs, flat_act_clipped) -> [T*N]: U-hat of each imagined transition (eq. 12),
      called once after the loop on all T x N transitions.
    - engine: ROLLOUT_ENGINES, see `resolve_engine`; all give the same numbers up to float rounding.
      run_steps: the imagined steps the whole run takes in sequence, which `auto` reads on the CPU.
    - batch_size (needs restart=True): BREMEN's sampler instead of exactly `horizon` steps: a
      path also ends when it reaches `horizon` steps (the lane restarts), and the lanes run on
      until the paths completed so far hold >= batch_size steps (`_run_until_batch`). Draws are
      made for ceil(batch_size / n_rollouts) + horizon - 1 steps, enough in every case (a lane's
      unfinished path is < horizon steps); the outputs are cut to the steps run, and
      `path_end` [T, N] (bool: terminated or cut at `horizon`) is added.

    Returns [T, N] tensors on start_states's device: obs, act (unclipped sample), rew, next_obs,
    terminated (bool: the path ended by termination at this step), timestep (long: steps since
    this lane's current path started, 0 at a (re)start), member (long), alive (float: all ones
    with restart=True), and labels when label_fn is given.
    """
    if member_choice not in MEMBER_CHOICES:
        raise ValueError(f"member_choice must be one of {MEMBER_CHOICES}, got {member_choice!r}")
    if start_states.dim() != 2 or start_states.shape[0] == 0:
        raise ValueError(f"start_states must be a non-empty pool [S, obs_dim], got shape {tuple(start_states.shape)}")
    if n_rollouts < 1 or horizon < 1:
        raise ValueError(f"n_rollouts and horizon must be >= 1, got {n_rollouts} and {horizon}")
    if batch_size is not None and (not restart or batch_size < 1):
        raise ValueError(f"imagine(batch_size={batch_size}) needs restart=True and batch_size >= 1 (BREMEN's sampler)")
    device = start_states.device
    engine = COMPILED["used"] = resolve_engine(engine, device, run_steps)
    reward_fn = reward_fn or (lambda s, a, s2: model_side.model_reward(env_name, s, a, s2))
    termination_fn = termination_fn or (lambda s, a, s2: model_side.model_termination(env_name, s, a, s2))
    candidates = torch.as_tensor(range(dynamics.members) if members is None else members).long().to(device)
    if clip_obs is not None:
        clip_obs = tuple(torch.as_tensor(b, dtype=start_states.dtype, device=device) for b in clip_obs)

    # Every draw of the rollout, on the generator's device, moved to the device once.
    gen_device = generator.device if generator is not None else torch.device("cpu")
    T, N, S, K = horizon, n_rollouts, start_states.shape[0], len(candidates)
    if batch_size is not None:  # the most steps BREMEN's sampler can need
        T = -(-batch_size // N) + horizon - 1

    def uniform(n: int, *size: int) -> torch.Tensor:
        return torch.randint(n, size, generator=generator, device=gen_device).to(device)

    first = uniform(S, N)
    lane_member = candidates[uniform(K, N)]
    draws = {"noise": torch.randn(T, N, dynamics.act_dim, generator=generator, device=gen_device).to(device),
             "member": uniform(K, T) if member_choice == "per_step" else uniform(K, T, N),
             "restart": uniform(S, T, N)}
    state = {"obs": start_states[first].clone(), "timestep": torch.zeros(N, dtype=torch.long, device=device),
             "member": lane_member, "alive": torch.ones(N, device=device)}
    out = {"obs": start_states.new_empty(T, N, start_states.shape[1]),
           "act": start_states.new_empty(T, N, dynamics.act_dim),
           "rew": start_states.new_empty(T, N), "next_obs": start_states.new_empty(T, N, start_states.shape[1]),
           "terminated": torch.empty(T, N, dtype=torch.bool, device=device),
           "timestep": torch.empty(T, N, dtype=torch.long, device=device),
           "member": torch.empty(T, N, dtype=torch.long, device=device), "alive": start_states.new_empty(T, N)}
    step = make_step(dynamics, policy_sample, start_states, candidates, member_choice, restart,
                     reward_fn, termination_fn, clip_obs, max_path_length=None if batch_size is None else horizon)
    if batch_size is None:
        _run(engine, step, state, draws, out, T)
    else:
        T = _run_until_batch(engine, step, state, draws, out, horizon, batch_size)
        out = {key: value[:T] for key, value in out.items()}
        out["path_end"] = out["terminated"] | (out["timestep"] == horizon - 1)
    if label_fn is not None:  # the labels do not steer the rollout: one call on all T x N samples
        flat_obs = out["obs"].reshape(T * N, -1)
        flat_act = out["act"].clamp(-1.0, 1.0).reshape(T * N, -1)
        out["labels"] = label_fn(flat_obs, flat_act).reshape(T, N)
    return out
