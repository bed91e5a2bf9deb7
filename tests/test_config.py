"""Profiles resolve to one config per run; bad keys and values are rejected before any work."""
import pytest

from algos.config import ConfigError, load_profile, resolve_run_config


def test_paper_profile_holds_table2_and_the_section4_grid():
    # MUSBO paper, Table 2 and section 4.
    expected = {"ant": (2000, 250, 0.05, 5), "halfcheetah": (2000, 250, 0.1, 5), "hopper": (6000, 1000, 0.05, 10),
                "walker2d": (2000, 1000, 0.05, 10), "cheetah-run": (2000, 250, 0.05, 5)}
    for env, (iters, length, delta, deployments) in expected.items():
        cfg = resolve_run_config("paper", "musbo", env, "500k", 0)
        assert (cfg["trpo"]["iterations"], cfg["trpo"]["rollout_length"], cfg["trpo"]["delta"]) == (iters, length, delta)
        assert cfg["deployments"] == deployments
        assert cfg["batch_size"] * deployments == 500_000
        assert resolve_run_config("paper", "musbo", env, "250k", 0)["batch_size"] * deployments == 250_000
    assert resolve_run_config("paper", "musbo", "ant", "500k", 0)["trpo"]["gae_lambda"] == 0.97
    assert resolve_run_config("paper", "musbo", "hopper", "500k", 0)["trpo"]["gae_lambda"] == 0.95


def test_mini_and_smoke_override_only_sizes():
    paper, mini = load_profile("paper"), load_profile("mini")
    assert mini["algos"] == paper["algos"] and mini["envs"] == paper["envs"]
    cfg = resolve_run_config("mini", "musbo", "hopper", "500k", 1)
    assert cfg["musbo"] == resolve_run_config("paper", "musbo", "hopper", "500k", 1)["musbo"]
    assert cfg["profile"] == "mini" and cfg["seed"] == 1


def test_set_overrides_a_key_with_type_coercion():
    cfg = resolve_run_config("smoke", "musbo", "hopper", "500k", 0, ["trpo.delta=1", "musbo.exploration_noise=none"])
    assert cfg["trpo"]["delta"] == 1.0 and isinstance(cfg["trpo"]["delta"], float)
    assert resolve_run_config("smoke", "musbo", "hopper", "500k", 0, ["trpo.delta=1e-3"])["trpo"]["delta"] == 1e-3
    assert cfg["musbo"]["exploration_noise"] == "none"


@pytest.mark.parametrize("override, message", [
    ("trpo.detla=0.1", "did you mean 'trpo.delta'"),
    ("nonsense=1", "unknown config key 'nonsense'"),
    ("trpo.iterations=abc", "trpo.iterations must be int"),
    ("trpo.iterations=0", "must be positive"),
    ("dynamics.batch_size=-5", "must not be negative"),
    ("musbo.exploration_noise=loud", "choose one of eq22, one_minus_u, none"),
    ("trpo.clip_predictions=true", "choose one of abs_1e5, data_range, none"),   # the old boolean form
    ("model_eval_box=obs_range", "choose one of abs_1e5, data_range, none"),
    ("musbo.uncertainty_weighting=1", "must be bool"),
    ("dynamics.holdout=1.5", "must lie in (0, 1]"),
    ("trpo.delta", "must look like key=value"),
    ("device=tpu", "device='tpu' is not valid"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=None) as err:
        resolve_run_config("smoke", "musbo", "hopper", "500k", 0, [override])
    assert message in str(err.value)


@pytest.mark.parametrize("args, message", [
    (("smoke", "sac", "hopper", "500k", 0), "unknown algo 'sac'"),
    (("smoke", "musbo", "humanoid", "500k", 0), "unknown env 'humanoid'"),
    (("smoke", "musbo", "hopper", "1m", 0), "unknown budget '1m'"),
    (("tiny", "musbo", "hopper", "500k", 0), "unknown profile 'tiny'"),
    (("smoke", "musbo", "hopper", "500k", -1), "seed must be a non-negative integer"),
])
def test_bad_run_arguments_are_named(args, message):
    with pytest.raises(ConfigError) as err:
        resolve_run_config(*args)
    assert message in str(err.value)
