"""config/medium.yaml is sizes only, scaled by one budget factor K and one TRPO factor f, and holds
one rung of bench/medium_ladder.py (the only medium check in the unit tests: no medium run here)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from algos.config import load_profile, resolve_run_config

ROOT = Path(__file__).resolve().parent.parent
# The keys a medium profile may change: sizes, and the resources of one workstation.
SIZE_KEYS = {"torch_threads", "budget_samples.500k", "budget_samples.250k", "dynamics.hidden",
             "dynamics.batch_size", "dynamics.max_epochs", "labeler.hidden", "labeler.batch_size",
             "labeler.max_epochs", "bc.steps", "bremen.model_max_epochs", "trpo.transitions_per_iteration",
             "mopo.max_epochs", "mopo.rollout_batch", "mopo.sac_steps"}
ALGOS = ("musbo", "bremen", "mopo")


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def medium_file() -> dict:
    return yaml.safe_load((ROOT / "config" / "medium.yaml").read_text())


def ladder():
    spec = importlib.util.spec_from_file_location("medium_ladder", ROOT / "bench" / "medium_ladder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_medium_changes_sizes_only():
    run = medium_file()["run"]
    assert set(flat(run["defaults"])) <= SIZE_KEYS
    for env, section in run["envs"].items():
        assert set(flat(section)) == {"trpo.iterations"}, env


def test_medium_budgets_are_the_papers_over_one_factor_and_deployments_stay():
    paper, medium = load_profile("paper")["run"], load_profile("medium")["run"]
    factors = {paper["defaults"]["budget_samples"][b] / n for b, n in medium["defaults"]["budget_samples"].items()}
    assert len(factors) == 1 and factors.pop() > 1
    for env in paper["envs"]:
        cfg_paper = resolve_run_config("paper", "musbo", env, "500k", 0)
        cfg_medium = resolve_run_config("medium", "musbo", env, "500k", 0)
        assert cfg_medium["deployments"] == cfg_paper["deployments"]
        assert cfg_medium["batch_size"] * cfg_paper["budget_samples"]["500k"] == \
            cfg_paper["batch_size"] * cfg_medium["budget_samples"]["500k"]


def test_medium_trpo_iterations_are_table_2_times_one_factor():
    paper, medium = load_profile("paper")["run"]["envs"], load_profile("medium")["run"]["envs"]
    ratios = {medium[env]["trpo"]["iterations"] / paper[env]["trpo"]["iterations"] for env in paper}
    assert len(ratios) == 1 and 0 < ratios.pop() < 1


@pytest.mark.parametrize("algo", ALGOS)
def test_medium_switches_equal_the_papers(algo):
    for env in load_profile("paper")["run"]["envs"]:
        paper = flat(resolve_run_config("paper", algo, env, "500k", 0))
        medium = flat(resolve_run_config("medium", algo, env, "500k", 0))
        changed = {k for k in paper if paper[k] != medium[k]} - {"profile", "batch_size", "trpo.iterations"}
        assert changed <= SIZE_KEYS, (env, changed - SIZE_KEYS)


def test_medium_yaml_is_one_rung_of_the_ladder():
    module = ladder()
    for env in load_profile("paper")["run"]["envs"]:
        medium = resolve_run_config("medium", "bremen", env, "500k", 0)
        matching = [rung for rung in module.RUNGS
                    if resolve_run_config("medium", "bremen", env, "500k", 0, module.rung_overrides(rung, env)) == medium]
        assert matching, f"config/medium.yaml ({env}) is none of the ladder's rungs"
