"""analysis/learned.py: per algorithm, env and budget, whether the final return lies above
deployment 1's and above the better of the random policy and standing still."""
import numpy as np

from analysis import claims, learned, standing_still, summaries
from analysis.metrics import Interval
from analysis.results import Study

NO_CI = Interval(5.0, np.nan, np.nan)


def test_the_reading_needs_the_whole_final_ci_above_each_reference():
    first = Interval(100.0, 90.0, 110.0)
    assert learned.reading(Interval(300.0, 250.0, 350.0), first, trivial=200.0) == learned.LEARNED
    assert learned.reading(Interval(300.0, 250.0, 350.0), first, trivial=300.0) == learned.IMPROVED_ONLY
    assert learned.reading(Interval(105.0, 100.0, 110.0), first, trivial=50.0) == learned.TRIVIAL_ONLY
    assert learned.reading(Interval(105.0, 100.0, 110.0), first, trivial=105.0) == learned.DID_NOT_LEARN
    touching = Interval(120.0, 110.0, 130.0)  # low == deployment 1's high: not above
    assert learned.reading(touching, first, trivial=0.0) == learned.TRIVIAL_ONLY
    assert learned.reading(NO_CI, first, trivial=0.0) == learned.NO_CALL
    assert learned.reading(Interval(300.0, 250.0, 350.0), NO_CI, trivial=0.0) == learned.NO_CALL


def test_claims_md_reads_every_algorithm_against_the_better_trivial_policy(two_env_results, tmp_path,
                                                                            monkeypatch):
    cfg, root = two_env_results
    study = Study(cfg, root)
    returns = summaries.main_return_cis(study)
    last = study.deployments("hopper")
    final = returns[(returns.name == "bremen") & (returns.env == "hopper") & (returns.deployment == last)]
    # standing still made to score just below BREMEN's final Hopper CI, and far above everything on HalfCheetah
    still = {"hopper": float(final.low.iloc[0]) - 1e-6, "halfcheetah": 1e9}
    monkeypatch.setattr(standing_still, "reference", lambda env, seeds, episodes: still[env])
    df = learned.table(study, returns)
    assert len(df) == len(cfg["envs"]) * len(study.algos)
    row = df[(df.env == "hopper") & (df.name == "bremen")].iloc[0]
    assert row.trivial == max(row.random, still["hopper"]) and row.seeds == 2
    assert row.reading == learned.reading(row.final, row["first"], row.trivial)
    assert row.reading in (learned.LEARNED, learned.TRIVIAL_ONLY)                 # above standing still
    assert set(df[df.env == "halfcheetah"].reading) <= {learned.IMPROVED_ONLY, learned.DID_NOT_LEARN}
    claims.claims(study, tmp_path / "out")
    text = (tmp_path / "out" / "claims.md").read_text()
    assert "## Did each algorithm learn?" in text and f"| {row.reading} |" in text
