"""The claims added for issue 14: Theorem 1's monotone improvement, appendix F's time per run,
and the verdicts under each reading, on fake run directories with hand-set returns."""
import copy
import shutil

import numpy as np
import pandas as pd
import pytest

from analysis import claims, summaries
from analysis.profile import load_profile
from analysis.results import RunKey, Study
from analysis.synthetic import write_fake_results, write_run

READINGS = {"eq9_std_sum": ["musbo.eq9_distance=std_sum"]}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    cfg = copy.deepcopy(load_profile("mini"))
    cfg["seeds"], cfg["ablation_seeds"] = [0, 1], [0]       # a small grid keeps it fast
    cfg["envs"], cfg["budgets"] = ["halfcheetah", "hopper"], ["500k"]
    cfg["readings"], cfg["reading_switches"] = list(READINGS), READINGS
    root = tmp_path_factory.mktemp("claims") / "mini"
    write_fake_results(root, cfg, with_batches=False)
    s = Study(cfg, root)
    for k in s.ablation_seeds:
        write_run(root, RunKey("readings", "eq9_std_sum", cfg["ablation_env"], cfg["ablation_budget"], k), cfg,
                  with_batches=False)
    return s


def set_returns(study, key, returns, seconds=None):
    path = key.path(study.root) / "metrics.csv"
    m = pd.read_csv(path)
    m["eval_return_mean"] = returns
    if seconds is not None:
        for c in [c for c in m.columns if c.endswith("_s")]:
            m[c] = 0.0
        m["policy_s"] = seconds
    m.to_csv(path, index=False)


def test_monotone_share_counts_steps_without_a_drop(study):
    key = next(k for k in study.main_keys() if k.name == "musbo" and k.env == "halfcheetah" and k.budget == "500k")
    n = study.deployments(key.env)
    returns = ([1.0, 2.0, 1.5, 3.0, 3.0] + [4.0] * n)[:n]     # 2 >= 1, 1.5 < 2 (a drop), 3 >= 1.5, 3 >= 3, ...
    set_returns(study, key, returns)
    shares = summaries.monotone_share(Study(study.cfg, study.root))
    row = shares[(shares.name == "musbo") & (shares.env == "halfcheetah") & (shares.budget == "500k")]
    assert row.share.iloc[0] == pytest.approx((n - 2) / (n - 1)) and row.steps.iloc[0] == n - 1


def test_theorem_1_claim_does_not_hold_when_every_run_drops_and_holds_when_none_does(study):
    s = Study(study.cfg, study.root)
    musbo_runs = [k for k in s.main_keys() if k.name == "musbo"]
    for k in musbo_runs:
        n = s.deployments(k.env)
        set_returns(s, k, np.arange(n, dtype=float))            # strictly increasing: monotone, 2 seeds
    # the fixture runs Table 1 / Fig. 6 (Cheetah-Run) on one seed: point them at the 2-seed env
    two_seeds_everywhere = {**s.cfg, "novelty_env": "halfcheetah", "model_eval_env": "halfcheetah"}
    c16 = next(c for c in claims.collect_claims(Study(two_seeds_everywhere, s.root)) if c.id == "C16")
    assert c16.verdict == claims.HOLDS and c16.seeds == "2"
    c16 = next(c for c in claims.collect_claims(Study(s.cfg, s.root)) if c.id == "C16")
    assert c16.verdict.startswith(claims.INCONCLUSIVE) and c16.seeds == "1-2"   # Cheetah-Run: one seed
    for k in musbo_runs:
        n = s.deployments(k.env)
        set_returns(s, k, -np.arange(n, dtype=float))           # always dropping: share 0
    c16 = next(c for c in claims.collect_claims(Study(s.cfg, s.root)) if c.id == "C16")
    assert c16.verdict == claims.FAILS and "0.00 [0.00, 0.00]" in c16.ours
    one_seed = {**s.cfg, "seeds": [0]}                          # one seed decides nothing
    c16 = next(c for c in claims.collect_claims(Study(one_seed, s.root)) if c.id == "C16")
    assert c16.verdict.startswith(claims.INCONCLUSIVE)


def test_time_per_run_sums_the_phase_columns(study):
    s = Study(study.cfg, study.root)
    n = s.deployments("hopper")
    for key in [k for k in s.main_keys() if k.name == "musbo" and k.env == "hopper" and k.budget == "500k"]:
        set_returns(s, key, np.arange(n, dtype=float), seconds=[360.0] * n)     # 6 min per deployment
    hours = summaries.measured_run_hours(Study(s.cfg, s.root))
    row = hours[(hours.name == "musbo") & (hours.env == "hopper") & (hours.budget == "500k")]
    assert row.hours.iloc[0] == pytest.approx(n * 360 / 3600)
    section = "\n".join(claims.time_section(Study(s.cfg, s.root)))
    assert "26 h" in section and f"{n * 6:.1f} min" in section


def test_claims_report_has_the_three_new_sections(study, tmp_path):
    claims.claims(Study(study.cfg, study.root), tmp_path)
    text = (tmp_path / "claims.md").read_text()
    for title in ("## Monotone improvement (Theorem 1)", "## Time per run (appendix F)",
                  "## Verdicts under each reading"):
        assert title in text
    assert "`musbo.eq9_distance=std_sum`" in text and "C17" in text


def test_hopper_claims_c2_c3_under_a_reading_that_runs_musbo_and_bremen(tmp_path):
    """A reading with algos [musbo, bremen] on Hopper: its rows compare each run with its own
    algorithm's defaults, and C2 / C3 get a verdict with the defaults and one under the reading
    (BREMEN's reading runs in place of its defaults, MOPO's defaults kept)."""
    cfg = copy.deepcopy(load_profile("mini"))
    cfg["seeds"], cfg["ablation_seeds"], cfg["envs"], cfg["budgets"] = [0, 1], [0, 1], ["hopper"], ["500k"]
    cfg["readings"] = ["batch_full"]
    cfg["reading_switches"] = {"batch_full": {"set": ["trpo.batch_assembly=full"], "algos": ["musbo", "bremen"],
                                              "envs": ["hopper"]}}
    root = tmp_path / "mini"
    write_fake_results(root, cfg, with_batches=False)
    s = Study(cfg, root)
    n = s.deployments("hopper")

    def returns(key, first, last):
        set_returns(s, key, np.linspace(first, last, n) + key.seed)            # two seeds: a CI of width ~1
    for k in s.main_keys():
        returns(k, 10.0, {"musbo": 1000.0, "bremen": 10.0, "mopo": 10.0}[k.name])   # defaults: C2, C3 hold
    for name, last in (("batch_full", 1000.0), ("batch_full/bremen", 2000.0)):     # full: BREMEN learns
        for seed in (0, 1):
            key = RunKey("readings", name, "hopper", "500k", seed)
            write_run(root, key, cfg, with_batches=False)
            returns(key, 10.0, last)
    text = "\n".join(claims.readings_section(Study(cfg, root)))
    table = text.split("| Runs |")[1]
    defaults, full = (line for line in table.splitlines() if line.startswith(("| defaults", "| batch full")))
    assert f"| {claims.HOLDS} | {claims.HOLDS} |" in defaults                   # C2 and C3 with the defaults
    assert f"| {claims.FAILS} | {claims.FAILS} |" in full                       # both change under batch_full
    assert "2000" in full and "(MOPO: defaults)" in full
    rows = [line for line in text.split("| Runs |")[0].splitlines() if line.startswith("| batch full")]
    assert len(rows) == 2 and all("higher" in r or "overlapping" in r for r in rows[1:])  # BREMEN's: vs its own
    assert "`trpo.batch_assembly=full`" in rows[0]


def test_each_verdict_says_how_many_seeds_it_rests_on(study, tmp_path):
    root = tmp_path / "mini"
    shutil.copytree(study.root, root)
    shutil.rmtree(RunKey("runs", "musbo", "hopper", "500k", 1).path(root))    # MUSBO Hopper: seed 0 only
    s = Study(study.cfg, root)
    found = {c.id: c for c in claims.collect_claims(s)}
    assert found["C2"].seeds == "1-2"            # MUSBO's CI on one seed, the baselines' on two
    assert found["C2"].verdict.startswith(claims.INCONCLUSIVE)
    assert found["C3"].seeds == "2"              # the baselines only
    assert found["C11"].seeds == "-"             # the paper's own numbers
    claims.claims(s, tmp_path / "out")
    table = (tmp_path / "out" / "claims.md").read_text()
    assert "| Ours | Seeds | Verdict |" in table and "| 1-2 | **inconclusive" in table


def test_ablations_section_compares_each_ablation_with_musbo_and_the_baselines(tmp_path):
    """The ablation table: each ablation's final-return CI against MUSBO's defaults and each
    baseline's (higher / lower only when the CIs do not overlap), its seeds, and eq. 22's noise
    as its runs recorded it."""
    cfg = copy.deepcopy(load_profile("mini"))
    cfg["seeds"], cfg["ablation_seeds"] = [0, 1], [0, 1]
    cfg["envs"], cfg["budgets"], cfg["readings"] = ["halfcheetah"], ["500k"], []
    root = tmp_path / "mini"
    write_fake_results(root, cfg, with_batches=False)
    s = Study(cfg, root)
    env, budget = cfg["ablation_env"], cfg["ablation_budget"]
    finals = {("runs", "musbo"): (0, 1), ("runs", "bremen"): (1000, 1200), ("runs", "mopo"): (-50, -40),
              ("ablations", "exploration_one_minus_u"): (1050, 1150), ("ablations", "no_exploration_noise"): (-1, 300)}
    for (kind, name), by_seed in finals.items():
        for seed, final in enumerate(by_seed):
            set_returns(s, RunKey(kind, name, env, budget, seed), [0, 0, 0, 0, final])
    shutil.rmtree(RunKey("ablations", "no_uncertainty_weighting", env, budget, 1).path(root))
    scalars = pd.DataFrame({"deployment": [2, 2, 3, 3], "phase": "exploration", "step": 0,
                            "name": ["eq22_noise_std_mean", "eq22_clipped_share"] * 2, "value": [0.8, 0.2, 0.9, 0.3]})
    for seed in (0, 1):
        scalars.to_csv(RunKey("runs", "musbo", env, budget, seed).path(root) / "scalars.csv", index=False)
    text = "\n".join(claims.ablations_section(Study(cfg, root)))
    header = "| Runs | Switches | Final return | Seeds | eq. 22 noise std | eq. 22 clipped | vs MUSBO defaults | "
    assert header + "vs BREMEN defaults | vs MOPO defaults |" in text
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in text.splitlines() if line.startswith("| ")}
    assert rows["MUSBO, defaults"][2:8] == ["2", "0.85", "25 %", "-", "lower", "higher |"]
    assert rows["exploration one minus u"][2:] == ["2", "n/a", "n/a", "higher", "overlapping CIs", "higher |"]
    assert rows["no exploration noise"][5:7] == ["overlapping CIs", "lower"]
    assert rows["no uncertainty weighting"][2] == "1" and rows["no uncertainty weighting"][5] == "no CI"
