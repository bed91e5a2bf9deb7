"""envs.collector: one deployment's batch of exactly B real transitions, and whole episodes."""
import numpy as np
import pytest
from gymnasium.wrappers import TimeLimit

from envs import ENV_SPECS, make_env
from envs.collector import collect, reset_seed, run_episodes

KEYS = {"obs": np.float32, "act": np.float32, "rew": np.float32, "next_obs": np.float32,
        "terminated": np.bool_, "truncated": np.bool_, "episode_start": np.bool_}


def assert_same_batch(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("name, n, max_steps", [("hopper", 333, 40), ("halfcheetah", 25, 10), ("cheetah-run", 57, 1000)])
def test_exactly_n_transitions_with_the_declared_shapes(name, n, max_steps):
    spec = ENV_SPECS[name]
    batch = collect(name, n, None, seed=0, max_episode_steps=max_steps)
    assert batch.keys() == KEYS.keys()
    for k, dtype in KEYS.items():
        assert batch[k].dtype == dtype and len(batch[k]) == n, k
    assert batch["obs"].shape == batch["next_obs"].shape == (n, spec.obs_dim)
    assert batch["act"].shape == (n, spec.act_dim) and np.abs(batch["act"]).max() <= 1


def test_bookkeeping_matches_what_the_env_reports():
    """Replay the batch's actions on the standard wrapped env (gymnasium.make's wrappers, the
    float32 cast, TimeLimit) with the collector's reset seeds: every field must agree."""
    name, n, max_steps = "hopper", 400, 30  # random Hopper falls in ~10-40 steps: both endings occur
    batch = collect(name, n, None, seed=3, max_episode_steps=max_steps)
    env = TimeLimit(make_env(name), max_episode_steps=max_steps)
    episode, fresh = 0, True
    for t in range(n):
        if fresh:
            obs, _ = env.reset(seed=reset_seed(3, episode))
        assert batch["episode_start"][t] == fresh
        np.testing.assert_array_equal(batch["obs"][t], obs)
        obs, rew, terminated, truncated, _ = env.step(batch["act"][t])
        np.testing.assert_array_equal(batch["next_obs"][t], obs)
        assert batch["rew"][t] == np.float32(rew)
        assert batch["terminated"][t] == terminated
        if t < n - 1:
            assert batch["truncated"][t] == truncated
        fresh = terminated or truncated
        episode += fresh
    assert batch["terminated"].sum() > 3 and batch["truncated"][:-1].sum() > 3


def test_transitions_chain_inside_episodes_and_the_batch_end_is_truncated():
    batch = collect("halfcheetah", 25, None, seed=1, max_episode_steps=10)
    done = batch["terminated"] | batch["truncated"]
    np.testing.assert_array_equal(np.flatnonzero(done), [9, 19, 24])  # time limit, time limit, batch end
    np.testing.assert_array_equal(np.flatnonzero(batch["episode_start"]), [0, 10, 20])
    inside = ~done[:-1]
    np.testing.assert_array_equal(batch["next_obs"][:-1][inside], batch["obs"][1:][inside])
    assert not np.array_equal(batch["next_obs"][9], batch["obs"][10])  # a reset in between
    # a batch that ends exactly at an episode's end gets no extra mark
    exact = collect("halfcheetah", 20, None, seed=1, max_episode_steps=10)
    assert exact["truncated"][19] and not exact["terminated"].any()


def test_cheetah_run_episodes_end_truncated_at_1000_steps():
    batch = collect("cheetah-run", 1001, None, seed=0, max_episode_steps=5000)  # dm_control's own limit
    assert np.flatnonzero(batch["truncated"]).tolist() == [999, 1000]
    assert not batch["terminated"].any() and batch["episode_start"][[0, 1000]].all()


def test_same_seed_same_batch_other_seed_other_batch():
    a = collect("walker2d", 300, None, seed=5, max_episode_steps=50)
    assert_same_batch(a, collect("walker2d", 300, None, seed=5, max_episode_steps=50))
    b = collect("walker2d", 300, None, seed=6, max_episode_steps=50)
    assert not np.array_equal(a["obs"][0], b["obs"][0]) and not np.array_equal(a["act"], b["act"])


def test_policy_actions_are_used_clipped_and_stored():
    seen = []

    def policy(obs_batch):
        assert obs_batch.dtype == np.float32 and obs_batch.shape == (1, 17)
        seen.append(obs_batch.copy())
        return np.array([[3.0, -3.0, 0.5, -0.25, 1.5, 0.0]])  # partly outside [-1, 1]

    batch = collect("halfcheetah", 30, policy, seed=0, max_episode_steps=1000)
    np.testing.assert_array_equal(batch["act"], np.tile(np.float32([1, -1, 0.5, -0.25, 1, 0]), (30, 1)))
    np.testing.assert_array_equal(np.concatenate(seen), batch["obs"])
    # the clipped action is what the env was stepped with: replay it
    env = make_env("halfcheetah")
    env.reset(seed=reset_seed(0, 0))
    for t in range(30):
        obs, rew, *_ = env.step(np.clip([3.0, -3.0, 0.5, -0.25, 1.5, 0.0], -1, 1))
        np.testing.assert_array_equal(batch["next_obs"][t], obs)
    # a deterministic policy reproduces its batch; different actions give different states
    assert_same_batch(batch, collect("halfcheetah", 30, policy, seed=0))
    other = collect("halfcheetah", 30, lambda o: np.zeros((1, 6)), seed=0)
    np.testing.assert_array_equal(other["obs"][0], batch["obs"][0])
    assert not np.array_equal(other["next_obs"][-1], batch["next_obs"][-1])


def test_progress_bar_does_not_change_the_batch(capsys):
    assert_same_batch(collect("hopper", 50, None, seed=2, progress=True), collect("hopper", 50, None, seed=2))


def test_unknown_env_name_raises_value_error():
    with pytest.raises(ValueError, match="walker2d, hopper, halfcheetah, ant, cheetah-run"):
        collect("humanoid", 10, None, seed=0)


def test_run_episodes_returns_whole_episodes_and_their_real_returns():
    episodes = run_episodes("hopper", None, n_episodes=3, seed=0, max_episode_steps=200)
    assert len(episodes) == 3
    for ep in episodes:
        n = len(ep["rew"])
        assert 1 <= n <= 200 and ep["obs"].shape == ep["next_obs"].shape == (n, 11) and ep["act"].shape == (n, 3)
        assert ep["obs"].dtype == ep["next_obs"].dtype == ep["act"].dtype == np.float32
        assert ep["ret"] == pytest.approx(float(ep["rew"].sum()), rel=1e-5) and isinstance(ep["ret"], float)
        np.testing.assert_array_equal(ep["next_obs"][:-1], ep["obs"][1:])
        assert ep["terminated"] == (n < 200)  # random Hopper falls before 200 steps
    # each episode starts from its own reset
    assert not np.array_equal(episodes[0]["obs"][0], episodes[1]["obs"][0])
    # a deterministic policy gives identical episodes for the same seed, and the env's return
    policy = lambda obs: np.tanh(obs[:, :6])  # noqa: E731
    a = run_episodes("halfcheetah", policy, 2, seed=4, max_episode_steps=50)
    b = run_episodes("halfcheetah", policy, 2, seed=4, max_episode_steps=50)
    for x, y in zip(a, b):
        assert x["ret"] == y["ret"] and len(x["rew"]) == 50
        np.testing.assert_array_equal(x["act"], y["act"])
    env = make_env("halfcheetah")
    obs, _ = env.reset(seed=reset_seed(4, 0))
    ret = 0.0
    for _ in range(50):
        obs, rew, *_ = env.step(np.clip(policy(obs[None])[0], -1, 1))
        ret += rew
    assert a[0]["ret"] == pytest.approx(ret, rel=1e-6)
