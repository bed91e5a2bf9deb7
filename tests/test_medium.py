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


def _rung(passes: dict, cpu: float, complete: bool = True) -> dict:
    """A rung record as evaluate_rung writes it: gating pair -> passes."""
    pairs = {pair: {"passes": ok} for pair, ok in passes.items()}
    return {"complete": complete, "pairs": pairs, "mean_cpu_minutes": cpu,
            "gating_pairs_passed": sum(passes.values()), "passes": complete and all(passes.values())
            and len(passes) == 3 and cpu <= 20.0}


def test_ladder_pick_follows_the_rule_and_decides_only_when_no_run_can_change_it():
    m = ladder()
    assert list(m.RUNGS) == ["R1", "R2", "R3"] and m.costs_at_least("R3", "R2") and not m.costs_at_least("R2", "R3")
    r1 = _rung({"bremen/halfcheetah": True, "mopo/halfcheetah": False}, 6.0, complete=False)  # what R1 left
    all_pass = {"bremen/halfcheetah": True, "mopo/halfcheetah": True, "mopo/hopper": True}
    # the cheapest passing rung
    assert m.pick({"R1": r1, "R2": _rung(all_pass, 15.0)})["rung"] == "R2"
    # R2 passes its pairs but costs too much: R3, which does at least R2's work, cannot pass either,
    # and can at best tie R2's 3 pairs, so the cheaper R2 is picked without running R3
    over = m.pick({"R1": r1, "R2": _rung(all_pass, 25.0)})
    assert over["rung"] == "R2" and "does at least R2's work" in over["why"]
    # R2 fails a pair and costs too much: R3 could still pass all three pairs, so it must run
    two = {**all_pass, "mopo/hopper": False}
    assert m.pick({"R1": r1, "R2": _rung(two, 25.0)})["rung"] is None
    # R2 fails a pair within the cap: R3 may still pass the rule
    assert m.pick({"R1": r1, "R2": _rung(two, 15.0)})["rung"] is None
    # every rung run, none passes: the most gating pairs, the cheaper on a tie
    r3 = _rung(two, 40.0)
    r1_done = _rung({"bremen/halfcheetah": True, "mopo/halfcheetah": False, "mopo/hopper": False}, 6.0)
    assert m.pick({"R1": r1_done, "R2": _rung(two, 25.0), "R3": r3})["rung"] == "R2"
    assert m.pick({"R1": r1_done, "R2": _rung({**two, "mopo/halfcheetah": False}, 25.0), "R3": r3})["rung"] == "R3"
    # ... but while R1 is unfinished it could still tie at 2 pairs, and it is the cheaper
    assert m.pick({"R1": r1, "R2": _rung(two, 25.0), "R3": r3})["rung"] is None
    # nothing run beyond R1: undecided
    assert m.pick({"R1": r1})["rung"] is None
