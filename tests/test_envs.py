"""envs: the five environments, the observation-index table, and the model-side rewards and
terminations of appendix F, each checked against the installed simulators."""
import dataclasses
import inspect
import warnings

import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env

import envs
from envs import ENV_NAMES, ENV_SPECS, make_env, model_reward, model_termination
from envs.quiet import quiet_model_compile

GYM_ENVS = ("walker2d", "hopper", "halfcheetah", "ant")
ROLLOUT_STEPS = {"walker2d": 2000, "hopper": 2000, "halfcheetah": 2000, "ant": 2000, "cheetah-run": 5000}


def test_env_names_are_the_papers_five():
    assert ENV_NAMES == ("walker2d", "hopper", "halfcheetah", "ant", "cheetah-run")
    assert tuple(ENV_SPECS) == ENV_NAMES


@pytest.mark.parametrize("call", [
    lambda: make_env("Hopper-v5"),
    lambda: model_reward("cheetah_run", np.zeros(17), np.zeros(6), np.zeros(17)),
    lambda: model_termination("hoper", np.zeros(11), np.zeros(3), np.zeros(11)),
])
def test_unknown_env_name_raises_value_error_naming_the_valid_ones(call):
    with pytest.raises(ValueError) as err:
        call()
    for name in ENV_NAMES:
        assert name in str(err.value)


@pytest.mark.parametrize("name", ENV_NAMES)
def test_gymnasium_env_checker_passes_and_spaces_match_the_table(name):
    spec = ENV_SPECS[name]
    env = make_env(name, seed=0)
    assert isinstance(env.observation_space, spaces.Box) and env.observation_space.dtype == np.float32
    assert env.observation_space.shape == (spec.obs_dim,)
    assert isinstance(env.action_space, spaces.Box) and env.action_space.shape == (spec.act_dim,)
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    assert env.spec.max_episode_steps == 1000
    with warnings.catch_warnings(), quiet_model_compile():
        # check_env suggests checking env.unwrapped; we check the wrapped env on purpose: the
        # float32 observation is part of our contract. Infinite Box bounds are intended.
        warnings.filterwarnings("ignore", message=".*(different from the unwrapped|infinity).*")
        check_env(env, skip_render_check=True)  # nothing renders on these headless machines
    obs, _ = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (spec.obs_dim,)


@pytest.mark.parametrize("name", ENV_NAMES)
def test_same_seed_gives_the_same_trajectory(name):
    def trajectory(seed):
        env = make_env(name, seed=seed)
        rng = np.random.default_rng(0)
        obs, _ = env.reset()
        out = [obs]
        for _ in range(30):
            obs, rew, *_ = env.step(rng.uniform(-1, 1, ENV_SPECS[name].act_dim).astype(np.float32))
            out += [obs, np.float32(rew)]
        return np.concatenate([np.ravel(x) for x in out])

    first = trajectory(7)
    np.testing.assert_array_equal(first, trajectory(7))
    assert not np.array_equal(first, trajectory(8))
    # reset(seed=s) is the same as a first reset of make_env(name, seed=s)
    np.testing.assert_array_equal(make_env(name).reset(seed=7)[0], make_env(name, seed=7).reset()[0])


# ----- random rollouts, recorded once per env, used by the checks below -------------------

_ROLLOUTS: dict[str, dict[str, np.ndarray]] = {}


def rollout(name: str, steps_past_termination: int = 0) -> dict[str, np.ndarray]:
    """Uniform random actions on the wrapped env, with the simulator's own x velocity
    (info["x_velocity"], or dm_control's qvel[0] and physics.speed()), qpos, qvel and the env's
    reward terms. With steps_past_termination > 0 the episode goes on for that many steps after
    the env says terminated (the unwrapped env allows it), to see many unhealthy states."""
    key = f"{name}/{steps_past_termination}"
    if key in _ROLLOUTS:
        return _ROLLOUTS[key]
    env = make_env(name, seed=0, env_checker=False)
    sim = env.unwrapped
    data = sim.physics.data.ptr if name == "cheetah-run" else sim.data
    rng = np.random.default_rng(1)
    rec = {k: [] for k in ("obs", "act", "next_obs", "rew", "terminated", "x_velocity",
                           "reward_ctrl", "qpos", "qvel", "speed")}
    obs, _ = env.reset()
    past = None
    for _ in range(ROLLOUT_STEPS[name]):
        act = rng.uniform(-1, 1, ENV_SPECS[name].act_dim).astype(np.float32)
        next_obs, rew, terminated, truncated, info = env.step(act)
        rec["obs"].append(obs), rec["act"].append(act), rec["next_obs"].append(next_obs)
        rec["rew"].append(rew), rec["terminated"].append(terminated)
        rec["qpos"].append(data.qpos.copy()), rec["qvel"].append(data.qvel.copy())
        if name == "cheetah-run":
            rec["x_velocity"].append(float(sim.physics.named.data.qvel["rootx"][0]))
            rec["speed"].append(float(sim.physics.speed()))
            rec["reward_ctrl"].append(0.0)
        else:
            rec["x_velocity"].append(info["x_velocity"]), rec["reward_ctrl"].append(info["reward_ctrl"])
        obs = next_obs
        if terminated and steps_past_termination:
            past = steps_past_termination if past is None else past - 1
        if truncated or (terminated and (past is None or past == 0)):
            obs, _ = env.reset()
            past = None
    _ROLLOUTS[key] = {k: np.asarray(v) for k, v in rec.items()}
    return _ROLLOUTS[key]


def corr(a, b) -> float:
    return float(np.corrcoef(a, b)[0, 1])


# ----- the observation-index table --------------------------------------------------------

@pytest.mark.parametrize("name", ENV_NAMES)
def test_x_velocity_and_z_indices_are_the_simulators_own(name):
    spec, r = ENV_SPECS[name], rollout(name)
    x_dot = r["next_obs"][:, spec.x_velocity_index]
    # ẋ in the observation is qvel[0] (the root's x velocity; clipped to ±10 by Hopper and Walker2d)
    np.testing.assert_allclose(x_dot, np.clip(r["qvel"][:, 0], -10, 10).astype(np.float32), rtol=0, atol=0)
    # z: qpos[2] for Ant's free joint, the rootz slide qpos[1] for the planar bodies
    np.testing.assert_array_equal(r["next_obs"][:, spec.z_index],
                                  r["qpos"][:, 2 if name == "ant" else 1].astype(np.float32))
    # and of all observation entries, ẋ is the one that tracks the simulator's forward velocity
    # (the finite difference of info["x_velocity"]; for cheetah-run the real reward)
    target = r["rew"] if name == "cheetah-run" else r["x_velocity"]
    corrs = [abs(corr(r["next_obs"][:, i], target)) if r["next_obs"][:, i].std() > 0 else 0.0
             for i in range(spec.obs_dim)]
    assert int(np.argmax(corrs)) == spec.x_velocity_index, corrs


def test_table_matches_the_installed_gymnasium_defaults():
    from gymnasium.envs.mujoco.ant_v5 import AntEnv
    from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
    from gymnasium.envs.mujoco.hopper_v5 import HopperEnv
    from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv

    def default(cls, arg):
        return inspect.signature(cls.__init__).parameters[arg].default

    for name, cls in (("walker2d", Walker2dEnv), ("hopper", HopperEnv), ("halfcheetah", HalfCheetahEnv), ("ant", AntEnv)):
        spec = ENV_SPECS[name]
        assert spec.env_ctrl_cost == default(cls, "ctrl_cost_weight")
        assert spec.frame_skip == default(cls, "frame_skip") == make_env(name).unwrapped.frame_skip
        for field in ("healthy_z_range", "healthy_angle_range", "healthy_state_range"):
            if field in inspect.signature(cls.__init__).parameters and spec.terminates:
                assert getattr(spec, field) == tuple(default(cls, field)), (name, field)
        if "healthy_reward" in inspect.signature(cls.__init__).parameters:
            assert spec.alive_bonus == default(cls, "healthy_reward")
        assert spec.env_terminates == ("terminate_when_unhealthy" in inspect.signature(cls.__init__).parameters)
    assert ENV_SPECS["ant"].env_ctrl_cost == 0.5 and ENV_SPECS["ant"].ctrl_cost == 0.1  # appendix F != Ant-v5
    assert ENV_SPECS["ant"].env_healthy_z_range == tuple(default(AntEnv, "healthy_z_range"))  # MOPO's Ant rule
    assert make_env("cheetah-run").unwrapped.frame_skip == ENV_SPECS["cheetah-run"].frame_skip
    for spec in ENV_SPECS.values():
        assert {"layout", "reward", "termination"} <= set(spec.source), spec.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        ENV_SPECS["hopper"].x_velocity_index = 6


# ----- model_reward (appendix F) ----------------------------------------------------------

@pytest.mark.parametrize("name", ENV_NAMES)
def test_action_cost_coefficient_is_exact(name):
    spec, r = ENV_SPECS[name], rollout(name)
    zero = np.zeros_like(r["act"])
    action_part = model_reward(name, r["obs"], r["act"], r["next_obs"]) - model_reward(name, r["obs"], zero, r["next_obs"])
    sq = (r["act"].astype(np.float64) ** 2).sum(-1)
    np.testing.assert_allclose(action_part, -spec.ctrl_cost * sq, rtol=1e-5, atol=1e-6)
    if spec.ctrl_cost == spec.env_ctrl_cost:  # walker2d, hopper, halfcheetah: the env's own ctrl_cost term
        np.testing.assert_allclose(action_part, r["reward_ctrl"], rtol=1e-5, atol=1e-6)
    else:  # Ant: appendix F says 0.1, Ant-v5 charges 0.5
        np.testing.assert_allclose(r["reward_ctrl"], -spec.env_ctrl_cost * sq, rtol=1e-5, atol=1e-6)
    # the formula at two actions: a = 0 and a = 1 differ by ctrl_cost * act_dim
    obs = np.zeros(spec.obs_dim)  # float64: exact to rounding
    ones = np.ones(spec.act_dim)
    diff = model_reward(name, obs, np.zeros_like(ones), obs) - model_reward(name, obs, ones, obs)
    assert diff == pytest.approx(spec.ctrl_cost * spec.act_dim, rel=1e-12)
    assert diff == pytest.approx({"walker2d": 0.006, "hopper": 0.003, "halfcheetah": 0.6, "ant": 0.8, "cheetah-run": 0.0}[name])


def test_reward_formulas_of_appendix_f():
    def at(name, x_dot=0.0, z=0.0, a=0.0):
        spec = ENV_SPECS[name]
        s = np.zeros(spec.obs_dim, np.float32)
        s[spec.x_velocity_index], s[spec.z_index] = x_dot, z
        return float(model_reward(name, s, np.full(spec.act_dim, a, np.float32), s))

    for name in ("walker2d", "hopper"):  # ẋ − 0.001 ||a||² + 1
        assert at(name, x_dot=2.0, a=0.5) == pytest.approx(2.0 - 0.001 * 0.25 * ENV_SPECS[name].act_dim + 1)
    assert at("halfcheetah", x_dot=2.0, a=0.5) == pytest.approx(2.0 - 0.1 * 0.25 * 6)  # ẋ − 0.1 ||a||²
    # Ant: ẋ − 0.1 ||a||² − 3.0 (z − 0.57)² + 1
    assert at("ant", x_dot=2.0, z=0.57, a=0.5) == pytest.approx(2.0 - 0.1 * 0.25 * 8 + 1)
    assert at("ant", x_dot=2.0, z=0.77, a=0.5) == pytest.approx(2.0 - 0.1 * 0.25 * 8 - 3.0 * 0.04 + 1)
    # Cheetah-Run: max(0, min(ẋ / 10, 1)), no action cost
    for x_dot, expected in ((-3.0, 0.0), (0.0, 0.0), (5.0, 0.5), (10.0, 1.0), (25.0, 1.0)):
        assert at("cheetah-run", x_dot=x_dot, a=1.0) == pytest.approx(expected)


@pytest.mark.parametrize("name", ENV_NAMES)
def test_model_reward_reads_velocity_of_next_obs(name):
    """The reward uses s' (see envs/model_side.py): obs is ignored, next_obs is not."""
    r = rollout(name)
    reward = model_reward(name, r["obs"], r["act"], r["next_obs"])
    np.testing.assert_array_equal(reward, model_reward(name, np.zeros_like(r["obs"]), r["act"], r["next_obs"]))
    assert not np.array_equal(reward, model_reward(name, r["obs"], r["act"], r["obs"]))


def test_next_obs_velocity_tracks_the_env_forward_reward_better():
    """Why s': on random rollouts, compare ẋ read from obs and from next_obs with what the real
    env pays for - the finite-difference x velocity (gym envs), and for Cheetah-Run the real
    reward against the model reward computed either way."""
    rows, total = [], {"obs": 0.0, "next_obs": 0.0}
    for name in ENV_NAMES:
        spec, r = ENV_SPECS[name], rollout(name)
        if name == "cheetah-run":
            target = r["rew"]
            candidates = {"obs": model_reward(name, r["next_obs"], r["act"], r["obs"]),
                          "next_obs": model_reward(name, r["obs"], r["act"], r["next_obs"])}
        else:
            target = r["x_velocity"]
            candidates = {k: r[k][:, spec.x_velocity_index] for k in ("obs", "next_obs")}
        c = {k: corr(v, target) for k, v in candidates.items()}
        rmse = {k: float(np.sqrt(np.mean((v - target) ** 2))) for k, v in candidates.items()}
        rows.append(f"{name:12s} corr obs {c['obs']:.3f} next_obs {c['next_obs']:.3f} | "
                    f"rmse obs {rmse['obs']:.3f} next_obs {rmse['next_obs']:.3f}")
        for k in total:
            total[k] += c[k]
        if name in ("halfcheetah",):  # large gap: dt = 0.05 s, the velocity changes a lot in a step
            assert c["next_obs"] > c["obs"] + 0.15 and rmse["next_obs"] < 0.7 * rmse["obs"]
        elif name == "cheetah-run":  # the real reward is computed after the physics step
            assert c["next_obs"] > c["obs"]
        else:  # dt 0.008 s (walker2d, hopper) or a smooth body (ant): either is as good
            assert abs(c["next_obs"] - c["obs"]) < 0.02
    print("\n" + "\n".join(rows))
    assert total["next_obs"] > total["obs"] + 0.2


# ----- model_termination ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["hopper", "walker2d"])
def test_termination_agrees_with_the_env(name):
    r = rollout(name, steps_past_termination=20)
    model = model_termination(name, r["obs"], r["act"], r["next_obs"])
    env = r["terminated"]
    assert model.dtype == bool and model.shape == env.shape
    assert 100 < env.sum() < len(env) - 100  # both kinds of state are well represented
    agreement = float(np.mean(model == env))
    print(f"\n{name}: model_termination agrees with the env on {100 * agreement:.2f} % of "
          f"{len(env)} steps ({int(env.sum())} terminal)")
    assert agreement >= 0.99


@pytest.mark.parametrize("name", ["halfcheetah", "ant", "cheetah-run"])
def test_termination_is_off_for_the_other_three(name):
    r = rollout(name)
    assert not model_termination(name, r["obs"], r["act"], r["next_obs"]).any()
    wild = np.random.default_rng(0).normal(0, 100, (3, 4, ENV_SPECS[name].obs_dim))
    done = model_termination(name, wild, wild[..., :ENV_SPECS[name].act_dim], wild)
    assert done.shape == (3, 4) and done.dtype == bool and not done.any()


def test_termination_rules_at_their_boundaries():
    s = np.zeros((6, 11), np.float32)
    s[:, 0] = 1.25  # Hopper, healthy
    s[1, 0] = 0.7  # z must be > 0.7 (strict)
    s[2, 1] = 0.2  # |angle| < 0.2
    s[3, 4] = 100.0  # every obs[1:] in (-100, 100)
    s[4, 0] = np.nan
    s[5, 0] = 50.0  # no upper z bound
    np.testing.assert_array_equal(model_termination("hopper", s, None, s), [False, True, True, True, True, False])
    w = np.zeros((5, 17), np.float32)
    w[:, 0] = 1.25  # Walker2d: 0.8 < z < 2.0, -1 < angle < 1
    w[1, 0], w[2, 0], w[3, 1], w[4, 1] = 0.8, 2.0, 1.0, -0.99
    np.testing.assert_array_equal(model_termination("walker2d", w, None, w), [False, True, True, True, False])


def test_mopo_ends_imagined_ant_rollouts_by_mopos_rule_and_musbo_bremen_never():
    """mopo/static/ant.py:9-14: done unless s' is finite and 0.2 <= z = s'[0] <= 1.0 (bounds in);
    appendix F / BREMEN's ant.py is_done: never. Numpy and torch alike, any leading dims."""
    a = np.zeros((7, 27), np.float32)
    a[:, 0] = [0.55, 0.2, 1.0, 0.1999, 1.0001, 0.55, 0.55]
    a[5, 20], a[6, 3] = np.nan, -np.inf  # a non-finite entry other than z
    expected = [False, False, False, True, True, True, True]
    np.testing.assert_array_equal(envs.mopo_termination("ant", a, None, a), expected)
    t = torch.from_numpy(a).reshape(7, 1, 27)
    done = envs.mopo_termination("ant", t, None, t)
    assert done.dtype == torch.bool and done.shape == (7, 1) and done.reshape(-1).tolist() == expected
    assert not model_termination("ant", a, None, a).any()  # MUSBO's and BREMEN's Ant never terminates
    # on the real Ant-v5 (random actions, run past terminations) MOPO's rule is the env's own
    r = rollout("ant", steps_past_termination=20)
    np.testing.assert_array_equal(envs.mopo_termination("ant", r["obs"], r["act"], r["next_obs"]), r["terminated"])


@pytest.mark.parametrize("name", ["walker2d", "hopper", "halfcheetah", "cheetah-run"])
def test_mopo_termination_is_model_termination_on_the_other_envs(name):
    r = rollout(name, steps_past_termination=20 if ENV_SPECS[name].terminates else 0)
    np.testing.assert_array_equal(envs.mopo_termination(name, r["obs"], r["act"], r["next_obs"]),
                                  model_termination(name, r["obs"], r["act"], r["next_obs"]))


# ----- numpy and torch alike --------------------------------------------------------------

@pytest.mark.parametrize("name", ENV_NAMES)
def test_numpy_and_torch_give_the_same_values(name):
    spec = ENV_SPECS[name]
    rng = np.random.default_rng(0)
    obs = rng.normal(0, 1, (4, 5, spec.obs_dim)).astype(np.float32)
    obs[..., spec.z_index] += 1.2  # some healthy, some not
    act = rng.uniform(-1, 1, (4, 5, spec.act_dim)).astype(np.float32)
    next_obs = obs + rng.normal(0, 0.5, obs.shape).astype(np.float32)
    r_np, d_np = model_reward(name, obs, act, next_obs), model_termination(name, obs, act, next_obs)
    t = [torch.from_numpy(x) for x in (obs, act, next_obs)]
    r_t, d_t = model_reward(name, *t), model_termination(name, *t)
    assert isinstance(r_np, np.ndarray) and r_np.shape == (4, 5) and r_np.dtype == np.float32
    assert isinstance(r_t, torch.Tensor) and r_t.shape == (4, 5) and r_t.dtype == torch.float32
    assert isinstance(d_t, torch.Tensor) and d_t.dtype == torch.bool and d_t.device == t[0].device
    assert isinstance(d_np, np.ndarray) and d_np.dtype == bool and d_np.shape == (4, 5)
    np.testing.assert_allclose(r_t.numpy(), r_np, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(d_t.numpy(), d_np)
    if spec.terminates:
        assert d_np.any() and not d_np.all()
    # float64 in, float64 out
    assert model_reward(name, *(torch.from_numpy(x).double() for x in (obs, act, next_obs))).dtype == torch.float64


def test_loading_leaves_no_mujoco_log_and_keeps_the_warning_callback(tmp_path, monkeypatch):
    import mujoco
    monkeypatch.chdir(tmp_path)
    make_env("cheetah-run")  # imports dm_control, which installs its own callback
    callback = mujoco.get_mju_user_warning()
    for name in ENV_NAMES:  # half_cheetah.xml and cheetah.xml use the deprecated settotalmass
        make_env(name)
    assert mujoco.get_mju_user_warning() is callback
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


def test_public_api():
    assert callable(envs.make_env) and callable(envs.model_reward) and callable(envs.model_termination)
    assert callable(envs.mopo_termination)
    from envs.collector import collect, run_episodes  # noqa: F401


# ----- Cheetah-Run's fast step against dm_control's own -------------------------------------

def test_cheetah_run_fast_step_is_bit_identical_to_dm_control():
    """CheetahRunEnv.step skips dm_control's per-step Python but must give exactly what
    control.Environment.step gives: same observation, reward and time limit, over more than
    one episode (the second starts from reset after the 1000-step truncation)."""
    from envs.cheetah_run import CheetahRunEnv, run_reward

    ours, ref = CheetahRunEnv(), CheetahRunEnv()  # ref is stepped through its dm_control env
    rng = np.random.default_rng(0)
    for episode in range(2):
        o1, _ = ours.reset(seed=3 + episode)
        o2, _ = ref.reset(seed=3 + episode)   # the same full simulator state (warm start included)
        np.testing.assert_array_equal(o1, o2)
        dm_obs = ref._dm_env.task.get_observation(ref.physics)  # dm_control's own observation
        np.testing.assert_array_equal(o1, np.concatenate((dm_obs["position"], dm_obs["velocity"])).astype(np.float32))
        for t in range(1000):
            a = rng.uniform(-1, 1, 6)
            obs, rew, term, trunc, _ = ours.step(a)
            ts = ref._dm_env.step(a)
            np.testing.assert_array_equal(
                obs, np.concatenate((ts.observation["position"], ts.observation["velocity"])).astype(np.float32))
            assert rew == ts.reward and not term
            assert trunc == ts.last() == (t == 999)
    with pytest.raises(RuntimeError, match="reset"):
        ours.step(np.zeros(6))
    # an invalid state raises as dm_control's Physics.step does (here: a NaN control)
    from dm_control.rl.control import PhysicsError
    for env, step in ((ours, ours.step), (ref, ref._dm_env.step)):
        env.reset(seed=0)
        with pytest.raises(PhysicsError):
            step(np.full(6, np.nan))
    # the reward formula at and around its breakpoints, against dm_control's tolerance
    from dm_control.utils import rewards
    for speed in (-3.0, 0.0, 1e-9, 2.5, 9.999, 10.0, 12.0):
        assert run_reward(speed) == rewards.tolerance(speed, bounds=(10, float("inf")), margin=10,
                                                      value_at_margin=0, sigmoid="linear")
