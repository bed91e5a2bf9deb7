"""analysis/standing_still.py: the return of standing still, and the note a verdict gets when an
algorithm's final-return CI contains it."""
import copy

import numpy as np
import pandas as pd

from analysis import claims, standing_still
from analysis.profile import env_run_config, load_profile
from analysis.results import Study


def test_standing_still_scores_about_zero_on_halfcheetah_and_the_healthy_reward_on_ant():
    assert abs(standing_still.still_policy_return("halfcheetah", 0, 1)) < 5   # no motion, no control cost
    assert standing_still.still_policy_return("ant", 0, 1) > 900              # 1 per step, never unhealthy


def test_a_final_return_ci_that_contains_standing_still_gets_a_note(tmp_path):
    cfg = copy.deepcopy(load_profile("mini"))
    cfg["seeds"] = [0, 1]
    study = Study(cfg, tmp_path)
    still = standing_still.reference("halfcheetah", [0, 1], env_run_config(cfg, "halfcheetah")["eval_episodes"])
    last = study.deployments("halfcheetah")
    returns = pd.DataFrame([                                                     # as summaries.ci_over_seeds
        ("musbo", "halfcheetah", "500k", last, still, still - 1, still + 1, 2),       # stands still
        ("bremen", "halfcheetah", "500k", last, 900.0, 800.0, 1000.0, 2),             # moves
        ("mopo", "halfcheetah", "500k", last, still, np.nan, np.nan, 1),              # one seed: no call
        ("bremen", "halfcheetah", "500k", last - 1, still, still - 1, still + 1, 2),   # not the last deployment
    ], columns=["name", "env", "budget", "deployment", "mean", "low", "high", "n"])
    notes = standing_still.notes(study, returns, [("halfcheetah", "500k")], ["musbo", "bremen", "mopo"])
    assert len(notes) == 1 and notes[0].startswith("scores as standing still: MUSBO HalfCheetah 500k")
    assert f"({still:.0f})" in notes[0]
    assert standing_still.notes(study, returns, [("halfcheetah", "500k")], ["bremen", "mopo"]) == []
    assert standing_still.notes(study, returns, [("halfcheetah", "250k")], ["musbo"]) == []


def test_verdicts_name_the_algorithms_they_compare_that_stand_still(two_env_results, monkeypatch):
    cfg, root = two_env_results
    study = Study(cfg, root)
    ret = claims.Evidence(study).returns
    final = ret[(ret.name == "bremen") & (ret.env == "hopper") & (ret.deployment == study.deployments("hopper"))]
    inside = float(final["mean"].iloc[0])  # standing still made to score BREMEN's final Hopper mean, nothing else
    monkeypatch.setattr(standing_still, "reference", lambda env, seeds, episodes: inside if env == "hopper" else 1e9)
    by_id = {c.id: c for c in claims.collect_claims(Study(cfg, root))}
    assert "scores as standing still: BREMEN Hopper 500k" in by_id["C2"].note     # MUSBO vs the baselines
    assert "scores as standing still: BREMEN Hopper 500k" in by_id["C3"].note     # the baselines on Hopper
    assert "standing still" not in by_id["C4c"].note                              # HalfCheetah
    assert "standing still" not in by_id["C16"].note                              # MUSBO alone, no comparison
