"""algos/core/rollouts.py: batched imagined rollouts (MUSBO step 5, BREMEN): shapes, which member
predicts each step, clipped actions for the model and reward but stored unclipped, restarts of
terminated rollouts (BREMEN's sampler) and the frozen switch, the model-side reward, labels
(eq. 12 hook), clipping, and the step without host syncs (compiled with fullgraph=True)."""
import pytest
import torch

import envs
from algos.core import rollouts
from algos.core.ensemble import DynamicsEnsemble, Prediction
from algos.core.policy import GaussianPolicy
from algos.core.rollouts import gaussian_sampler, imagine, make_step

N, T = 16, 12


class ShiftModel:
    """Member m moves every state by (m + 1) * 0.01 plus 0.001 * the clipped action sum."""
    act_dim = 6

    def __init__(self, members=4):
        self.members = members

    def predict(self, obs, act, member=None):
        step = 0.001 * act.sum(-1, keepdim=True)
        m = torch.as_tensor(member)
        if m.dim() == 0:  # one member for all rows: [1, N, D]
            return Prediction((obs + (m + 1) * 0.01 + step)[None])
        return Prediction(obs + (m[:, None] + 1) * 0.01 + step)


def member_of(out):
    """The member that made each step, read back from the fake model's shift."""
    shift = out["next_obs"][..., 0] - out["obs"][..., 0] - 0.001 * out["act"].clamp(-1, 1).sum(-1)
    return torch.round(shift / 0.01).long() - 1


def policy(scale=0.5):
    return lambda obs, noise: scale * noise


def start(obs_dim=17, seed=0, n=N):
    return torch.randn(n, obs_dim, generator=torch.Generator().manual_seed(seed)) * 0.1


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def roll(model=None, pol=None, starts=None, env="halfcheetah", g=None, **kw):
    kw.setdefault("member_choice", "per_step")
    return imagine(model or ShiftModel(), pol or policy(), start() if starts is None else starts, N, T, env,
                   gen() if g is None else g, **kw)


def test_shapes_and_per_step_member_shared_by_the_batch():
    out = roll()
    for key, shape in {"obs": (T, N, 17), "act": (T, N, 6), "rew": (T, N), "next_obs": (T, N, 17),
                       "terminated": (T, N), "alive": (T, N), "member": (T, N), "timestep": (T, N)}.items():
        assert out[key].shape == shape, key
    assert out["terminated"].dtype == torch.bool and out["timestep"].dtype == torch.long
    members = member_of(out)
    assert (members == members[:, :1]).all()                   # one member for all rollouts at a step
    assert len(members[:, 0].unique()) > 1                     # drawn afresh at each step
    torch.testing.assert_close(members, out["member"])
    torch.testing.assert_close(out["obs"][1:], out["next_obs"][:-1])   # states chain (no termination)
    torch.testing.assert_close(out["timestep"], torch.arange(T)[:, None].expand(T, N))
    assert (out["alive"] == 1).all()


def test_lanes_start_from_states_drawn_from_the_pool():
    pool = torch.arange(5.0)[:, None].expand(5, 17) * 10      # state k = (10k, ..., 10k)
    out = imagine(ShiftModel(), lambda o, e: torch.zeros(len(o), 6), pool, 40, 1, "halfcheetah", gen(),
                  member_choice="per_step")
    first = out["obs"][0, :, 0]
    assert set(first.tolist()) == {0.0, 10.0, 20.0, 30.0, 40.0}   # 40 lanes from a pool of 5
    with pytest.raises(ValueError, match="pool"):
        imagine(ShiftModel(), policy(), pool[0], 4, 2, "halfcheetah", gen(), member_choice="per_step")


def test_per_rollout_and_per_transition_members():
    out = roll(member_choice="per_rollout")
    members = member_of(out)
    assert (members == members[:1]).all()                      # each rollout keeps its member
    assert len(members[0].unique()) > 1
    out = roll(member_choice="per_transition", members=[1, 3])   # e.g. MOPO's elites
    members = member_of(out)
    assert set(members.unique().tolist()) == {1, 3}
    assert (members != members[:, :1]).any(dim=1).all()        # differ across the batch
    torch.testing.assert_close(members, out["member"])
    one = roll(members=torch.tensor([2]))                       # per_iteration: a member drawn on the device
    assert (member_of(one) == 2).all() and (one["member"] == 2).all()
    with pytest.raises(ValueError, match="member_choice"):
        roll(member_choice="per_member")


def test_reward_is_model_reward_of_clipped_tuples_and_act_unclipped():
    out = roll(pol=policy(scale=3.0))
    assert out["act"].abs().max() > 1.0                        # stored as sampled
    clipped = out["act"].clamp(-1, 1)
    expected = envs.model_reward("halfcheetah", out["obs"], clipped, out["next_obs"])
    torch.testing.assert_close(out["rew"], expected)
    unclipped = envs.model_reward("halfcheetah", out["obs"], out["act"], out["next_obs"])
    assert not torch.allclose(out["rew"], unclipped)


def ramp():
    """Lanes start at x in [0.5, 1.3]; each step adds at least 0.01; termination when x' > 1."""
    s0 = torch.zeros(N, 3)
    s0[:, 0] = torch.linspace(0.5, 1.3, N)
    return s0, dict(reward_fn=lambda s, a, s2: torch.ones(s.shape[0]), termination_fn=lambda s, a, s2: s2[:, 0] > 1.0)


def test_terminated_rollouts_restart_from_the_pool():
    """BREMEN's sampler: the step after a termination starts a new path from a pool state, at
    timestep 0, so the batch holds N x T real samples."""
    s0, fns = ramp()
    out = roll(pol=lambda o, e: torch.zeros(len(o), 6), starts=s0, **fns)
    term, ts = out["terminated"], out["timestep"]
    assert term.sum() > N                                      # lanes end several times
    assert (out["alive"] == 1).all() and (out["rew"] == 1).all()
    pool = set(s0[:, 0].tolist())
    for t in range(1, T):
        restarted = term[t - 1]
        assert (ts[t][restarted] == 0).all() and (ts[t][~restarted] == ts[t - 1][~restarted] + 1).all()
        assert all(x in pool for x in out["obs"][t, restarted, 0].tolist())        # a fresh start state
        torch.testing.assert_close(out["obs"][t, ~restarted], out["next_obs"][t - 1, ~restarted])
    # per_rollout: a restarted lane draws its member again, a running one keeps it
    out = roll(pol=lambda o, e: torch.zeros(len(o), 6), starts=s0, member_choice="per_rollout",
               reward_fn=fns["reward_fn"], termination_fn=lambda s, a, s2: torch.ones(len(s), dtype=torch.bool))
    assert (out["member"][1:] != out["member"][:-1]).any()
    torch.testing.assert_close(member_of(out), out["member"])


def test_restart_false_freezes_and_masks():
    """restart=False: the step that terminates is real, every later step is masked and frozen."""
    s0, fns = ramp()
    out = roll(pol=lambda o, e: torch.zeros(len(o), 6), starts=s0, restart=False, **fns)
    term, alive = out["terminated"], out["alive"]
    assert (term.sum(0) <= 1).all()                            # terminates at most once
    ended = term.any(0)
    assert ended.any() and (~ended).any()
    t_end = term.float().argmax(0)
    for k in range(N):
        steps = torch.arange(T)
        want = (steps <= t_end[k]).float() if ended[k] else torch.ones(T)
        torch.testing.assert_close(alive[:, k], want)
        if ended[k]:
            after = steps > t_end[k]
            terminal = out["next_obs"][t_end[k], k]
            assert (out["next_obs"][after, k] == terminal).all() and (out["obs"][after, k] == terminal).all()
    torch.testing.assert_close(out["rew"], alive)              # masked reward


def hopper_model():
    torch.manual_seed(0)
    model = DynamicsEnsemble(11, 3, members=3, hidden=[16])
    model.input_norm.fit(torch.randn(50, 14))
    model.target_norm.fit(torch.randn(50, 11) * 0.3)
    s0 = torch.zeros(N, 11)
    s0[:, 0] = 1.25
    return model, s0


def test_hopper_termination_and_reward_through_envs_and_ensemble_members():
    """The default reward/termination are the envs' model-side functions of the stored tuples,
    and each stored next state is the prediction of the stored member (the device-side member
    forms of DynamicsEnsemble.predict)."""
    model, s0 = hopper_model()
    pol = lambda obs, noise: noise
    for choice in ("per_step", "per_transition"):
        out = roll(model, pol, s0, "hopper", member_choice=choice)
        clipped = out["act"].clamp(-1, 1)
        term = envs.model_termination("hopper", out["obs"], clipped, out["next_obs"])
        torch.testing.assert_close(out["terminated"], term)
        torch.testing.assert_close(out["rew"], envs.model_reward("hopper", out["obs"], clipped, out["next_obs"]))
        assert out["terminated"].any()
        for m in range(3):
            sel = out["member"] == m
            want = model.predict(out["obs"][sel], clipped[sel], member=m).next_obs[0]
            torch.testing.assert_close(out["next_obs"][sel], want)


def test_labels_clip_obs_and_reproducibility():
    seen = []

    def label_fn(obs, act):
        seen.append(act.abs().max().item())
        return obs[:, 0] + act.sum(-1)  # a function of the pair: catches labels put on the wrong step

    low, high = -torch.ones(17) * 0.05, torch.ones(17) * 0.05
    out = roll(pol=policy(scale=3.0), label_fn=label_fn, clip_obs=(low, high))
    assert out["labels"].shape == (T, N)
    torch.testing.assert_close(out["labels"], out["obs"][..., 0] + out["act"].clamp(-1, 1).sum(-1))
    assert max(seen) <= 1.0                                    # labels see the clipped action
    assert out["next_obs"].max() <= 0.05 and out["next_obs"].min() >= -0.05
    again = roll(pol=policy(scale=3.0), label_fn=label_fn, clip_obs=(low.numpy(), high.numpy()))
    for key in out:
        torch.testing.assert_close(out[key], again[key])
    other = roll(pol=policy(scale=3.0), g=gen(1))
    assert not torch.equal(out["act"], other["act"])


def test_engines_validated():
    with pytest.raises(ValueError, match="rollout engine"):
        roll(engine="graph")
    with pytest.raises(ValueError, match="CUDA"):
        roll(engine="cuda_graph")


def paper_like_step(restart, choice):
    """The real step (DynamicsEnsemble, GaussianPolicy, Hopper's reward and termination, a box)."""
    model, s0 = hopper_model()
    pol = GaussianPolicy(11, 3, hidden=[8])
    cands = torch.arange(3)
    box = (torch.full((11,), -1e5), torch.full((11,), 1e5))
    step = make_step(model, gaussian_sampler(pol), s0, cands, choice, restart,
                     lambda s, a, s2: envs.model_reward("hopper", s, a, s2),
                     lambda s, a, s2: envs.model_termination("hopper", s, a, s2), box)
    g = gen(3)
    state = {"obs": s0 + 0.1 * torch.randn(N, 11, generator=g), "timestep": torch.arange(N),
             "member": torch.randint(3, (N,), generator=g), "alive": (torch.arange(N) % 3 > 0).float()}
    draw = torch.randint(3, (), generator=g) if choice == "per_step" else torch.randint(3, (N,), generator=g)
    return step, (state, torch.randn(N, 3, generator=g), draw, torch.randint(N, (N,), generator=g))


@pytest.mark.parametrize("restart,choice", [(True, "per_step"), (True, "per_rollout"), (False, "per_transition")])
def test_step_has_no_graph_break(restart, choice):
    """fullgraph=True fails on any .item(), int(), .cpu(), numpy call or data-dependent branch in
    the step (each would be a host sync); backend "eager" checks the tracing only, fast."""
    torch._dynamo.reset()
    step, args = paper_like_step(restart, choice)
    with torch.no_grad():
        traced = torch.compile(step, fullgraph=True, backend="eager")(*args)
        eager = step(*args)
    for part_traced, part_eager in zip(traced, eager):
        for key in part_eager:
            torch.testing.assert_close(part_traced[key], part_eager[key])


def test_compiled_engine_equals_eager():
    """engine="compiled" (torch.compile with inductor, the captured path's CPU stand-in) gives the
    eager numbers; one small shape (compiling takes ~20-40 s on 2 cores)."""
    torch._dynamo.reset()
    model, s0 = hopper_model()
    pol = GaussianPolicy(11, 3, hidden=[8], init_log_std=1.0)
    kw = dict(member_choice="per_step", clip_obs=(-torch.ones(11) * 1e5, torch.ones(11) * 1e5))
    eager = imagine(model, gaussian_sampler(pol), s0, 4, 6, "hopper", gen(), engine="eager", **kw)
    compiled = imagine(model, gaussian_sampler(pol), s0, 4, 6, "hopper", gen(), engine="compiled", **kw)
    assert eager["terminated"].any()
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA-graph engine needs one")
def test_cuda_graph_engine_equals_eager():
    model, s0 = hopper_model()
    model, s0 = model.cuda(), s0.cuda()
    pol = GaussianPolicy(11, 3, hidden=[8]).cuda()
    for choice in ("per_step", "per_rollout"):
        runs = [imagine(model, gaussian_sampler(pol), s0, 8, 20, "hopper", torch.Generator("cuda").manual_seed(0),
                        member_choice=choice, engine=e) for e in ("eager", "cuda_graph")]
        for key in runs[0]:
            torch.testing.assert_close(runs[1][key], runs[0][key], rtol=1e-5, atol=1e-5)
    assert rollouts.GRAPH["checked"] and rollouts.engine_fallback() is None  # the real capture passed its check


# ----- the cuda_graph engine checked against eager before its first replay (issue 21) ------

@pytest.fixture
def graph_on_cpu(monkeypatch):
    """The cuda_graph engine on CPU, its capture injected by the test (GRAPH["capture"])."""
    monkeypatch.setattr(rollouts, "resolve_engine", lambda engine, device, *_: engine)
    graph = {"capture": None, "checked": False, "fallback": None}
    monkeypatch.setattr(rollouts, "GRAPH", graph)
    return graph


def eager_and(engine, horizon=T):
    """The same rollout under eager and under `engine`."""
    model, s0 = hopper_model()
    pol = GaussianPolicy(11, 3, hidden=[8], init_log_std=1.0)
    return [imagine(model, gaussian_sampler(pol), s0, 4, horizon, "hopper", gen(), member_choice="per_step",
                    engine=e) for e in ("eager", engine)]


def assert_equal_outputs(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_captured_step_that_differs_from_eager_falls_back_to_eager(graph_on_cpu, capsys):
    graph_on_cpu["capture"] = lambda advance: (advance(), lambda: None)[1]  # a capture that recorded nothing
    assert_equal_outputs(*eager_and("cuda_graph"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("rollout engine cuda_graph: a captured step differs from eager beyond rounding (state "
                             "obs: max |difference| ")
    assert err[0].endswith("; falling back to eager for the rest of this run (recorded in provenance.json)")
    assert rollouts.engine_fallback() == err[0].split("cuda_graph: ")[1].split("; falling back")[0]
    graph_on_cpu["capture"] = lambda advance: pytest.fail("no capture after a fallback")
    assert_equal_outputs(*eager_and("cuda_graph"))
    assert capsys.readouterr().err == ""


def test_a_capture_that_fails_falls_back_to_eager(graph_on_cpu, capsys):
    def broken(advance):
        advance()  # the warm-up step ran: the fallback starts the rollout again
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
    graph_on_cpu["capture"] = broken
    assert_equal_outputs(*eager_and("cuda_graph"))
    assert rollouts.engine_fallback() == ("capture failed (RuntimeError: operation not permitted when stream is "
                                          "capturing)")
    assert capsys.readouterr().err.count("falling back to eager") == 1


def test_a_faithful_capture_is_checked_once_then_replayed(graph_on_cpu, capsys):
    replays = []

    def faithful(advance):  # what a working capture does: step 0 for real, then a replay of one step
        advance()
        return lambda: (replays.append(1), advance())
    graph_on_cpu["capture"] = faithful
    assert_equal_outputs(*eager_and("cuda_graph"))
    assert len(replays) == 1 + (T - 1) and graph_on_cpu["checked"]   # the check's replay, then steps 1..T-1
    assert_equal_outputs(*eager_and("cuda_graph"))
    assert len(replays) == 1 + 2 * (T - 1)                              # checked once per process
    assert rollouts.engine_fallback() is None and capsys.readouterr().err == ""


# ----- the clamp of imagined states (trpo.clip_predictions) ---------------------------------

class FallingHopper:
    """Every member moves each state halfway toward a recorded terminal state: a model of a
    fall the data has seen."""
    members, act_dim = 2, 3

    def __init__(self, terminal_state):
        self.target = torch.as_tensor(terminal_state)

    def predict(self, obs, act, member=None):
        return Prediction((obs + 0.5 * (self.target - obs))[None])


@pytest.mark.parametrize("kind", ["abs_1e5", "data_range", "none"])
def test_an_imagined_fall_terminates_under_every_clamp(kind):
    """Real Hopper data: its states (obs) are all healthy, terminal states appear only as next
    states. The clamp must keep them reachable, or an imagined Hopper could never fall (the
    bug of a box made from obs alone, which clamped z above 0.7 and made TRPO exploit it)."""
    import numpy as np
    from algos.core.model_trpo import prediction_box
    from envs.collector import collect

    data = collect("hopper", 2000, None, seed=0)
    assert data["terminated"].any() and not envs.model_termination("hopper", data["obs"], data["act"],
                                                                    data["obs"]).any()
    box = prediction_box(kind, data)
    if kind == "data_range":  # every recorded state, terminal next states included, lies inside
        for states in (data["obs"], data["next_obs"]):
            assert (states >= box[0]).all() and (states <= box[1]).all()
    elif kind == "abs_1e5":
        np.testing.assert_array_equal(box[1], np.full(11, 1e5, np.float32))
        np.testing.assert_array_equal(box[0], -box[1])
    else:
        assert box is None
    start = torch.as_tensor(data["obs"][data["episode_start"]][:8])
    out = imagine(FallingHopper(data["next_obs"][data["terminated"]][0]), lambda s, e: torch.zeros(len(s), 3),
                  start, len(start), 30, "hopper", None, member_choice="per_step",
                  clip_obs=box)
    assert out["terminated"].any(0).all(), "every imagined fall must end by the termination function"


def test_prediction_box_rejects_an_unknown_kind():
    import numpy as np
    from algos.core.model_trpo import prediction_box
    data = {"obs": np.zeros((3, 2), np.float32), "next_obs": np.zeros((3, 2), np.float32)}
    with pytest.raises(ValueError, match="abs_1e5"):
        prediction_box("obs_range", data)


# ----- `auto` on the CPU, and the compiled engine's fallback (session 11) ------

def test_auto_compiles_on_the_cpu_only_for_a_run_long_enough_to_repay_the_compilation():
    cpu, n = torch.device("cpu"), rollouts.AUTO_COMPILE_MIN_STEPS
    assert rollouts.resolve_engine("auto", cpu, n) == "compiled"
    assert rollouts.resolve_engine("auto", cpu, n - 1) == "eager"
    assert rollouts.resolve_engine("auto", cpu) == "eager"                       # the run's length not given
    assert rollouts.resolve_engine("auto", torch.device("cuda"), n - 1) == "cuda_graph"
    assert rollouts.resolve_engine("eager", cpu, n) == "eager"                  # an engine asked for is kept


def test_on_the_cpu_auto_compiles_medium_hopper_and_walker2d_and_nothing_of_mini_or_smoke():
    from algos.config import resolve_run_config

    def compiles(profile, env):
        cfg = resolve_run_config(profile, "musbo", env, "500k", 0)
        t = cfg["trpo"]
        steps = cfg["deployments"] * t["iterations"] * t["rollout_length"]
        return rollouts.resolve_engine(t["rollout_engine"], torch.device("cpu"), steps) == "compiled"
    assert compiles("medium", "hopper") and compiles("medium", "walker2d")
    assert not any(compiles("medium", env) for env in ("halfcheetah", "ant", "cheetah-run"))
    assert not any(compiles(profile, env) for profile in ("mini", "smoke") for env in envs.ENV_NAMES)


@pytest.fixture
def fresh_compiled(monkeypatch):
    state = {"advance": None, "fallback": None, "used": None}
    monkeypatch.setattr(rollouts, "COMPILED", state)
    return state


def test_a_compilation_that_fails_falls_back_to_eager_with_one_line(fresh_compiled, monkeypatch, capsys):
    def no_compiler(fn, **kwargs):
        raise RuntimeError("InductorError: no C++ compiler found\n(the rest of the message)")
    monkeypatch.setattr(torch, "compile", no_compiler)
    assert_equal_outputs(*eager_and("compiled", horizon=6))
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["rollout engine compiled: compile failed (RuntimeError: InductorError: no C++ compiler found); "
                   "falling back to eager for the rest of this run (recorded in provenance.json)"]
    assert rollouts.engine_fallback() == "compile failed (RuntimeError: InductorError: no C++ compiler found)"
    assert rollouts.engine_used() == "compiled"


def test_a_recompilation_that_fails_midway_leaves_the_remaining_steps_to_eager(fresh_compiled, capsys):
    calls = []

    def fails_at_the_third_step(*args):  # as a recompile for a new shape failing after two good steps
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("recompile failed")
        rollouts._advance(*args)
    fresh_compiled["advance"] = fails_at_the_third_step
    assert_equal_outputs(*eager_and("compiled", horizon=6))
    assert len(calls) == 3 and rollouts.engine_fallback() == "compile failed (RuntimeError: recompile failed)"
