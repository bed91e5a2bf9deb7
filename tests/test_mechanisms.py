"""analysis/mechanisms.py: the per-run reduction of scalars.csv, the degeneracy rule that calls a
mechanism inactive, and the notes that claims.md's MUSBO-vs-baseline verdicts carry, on
hand-written scalars.csv files."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch

from algos.core.bc import random_action_loss
from analysis import claims, mechanisms
from analysis.profile import load_profile
from analysis.results import Study
from analysis.synthetic import write_fake_results

CFG = {"trpo": {"delta": 0.05, "sample_noise": "fixed", "sample_std": 0.1},
       "policy": {"log_std": "state_dependent", "min_log_std": -5.0},
       "musbo": {"uncertainty_weighting": True}, "mopo": {"penalty_lambda": 2.0}}
METRICS = pd.DataFrame({"deployment": [1, 2, 3], "eval_return_mean": [5.0, 7.0, 11.0]})


def scalars(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["deployment", "phase", "step", "name", "value"])


def musbo_rows(eq12_share_at_1=0.5, clipped=0.1, bc_loss=0.2, reference=True):
    """Three deployments of MUSBO: labels and exploration at 2 and 3, two TRPO iterations each,
    BC ending at `bc_loss` (1.0 at deployment 1: the random batch)."""
    rows = []
    for d in (1, 2, 3):
        if d >= 2:
            rows += [(d, "labels", 0, "eq9_mean", 0.4 + 0.2 * (d - 2)), (d, "labels", 0, "eq9_p10", 0.1),
                     (d, "labels", 0, "eq9_share_at_0", 0.05), (d, "labels", 0, "eq9_share_at_1", 0.1 * d),
                     (d, "exploration", 0, "eq22_noise_std_mean", 0.5), (d, "exploration", 0, "eq22_clipped_share", clipped)]
        final = 1.0 if d == 1 else bc_loss * (d - 1)                     # 0.2 at 2, 0.4 at 3
        rows += [(d, "bc", 1, "bc_loss", 3.0), (d, "bc", 2, "bc_loss", final)]
        if reference:
            rows += [(d, "bc", 0, "random_action_loss", 0.5 * d)]
        for it in (0, 1):
            rows += [(d, "policy", it, "eq12_mean", 0.9), (d, "policy", it, "eq12_p10", 0.8),
                     (d, "policy", it, "eq12_p90", 0.99), (d, "policy", it, "eq12_share_at_0", 0.0),
                     (d, "policy", it, "eq12_share_at_1", eq12_share_at_1 + 0.02 * (it - 0.5)),
                     (d, "policy", it, "kl", 0.01 * (it + 1) * d), (d, "policy", it, "step_fraction", 0.5 * (it + 1)),
                     (d, "policy", it, "policy_std", 0.03 * d if it == 0 else 0.5),
                     (d, "policy", it, "mean_reward_x_horizon", 10.0 * d + it)]
    return rows


def test_run_row_reduces_each_quantity():
    row = mechanisms.run_row(scalars(musbo_rows(eq12_share_at_1=0.5)), METRICS, CFG, "musbo", "hopper")
    assert row["eq9_mean"] == pytest.approx(0.5) and row["eq9_share_at_1"] == pytest.approx(0.25)
    assert row["eq12_share_at_1"] == pytest.approx(0.5) and row["eq12_p10"] == pytest.approx(0.8)
    assert row["eq22_clipped_share"] == pytest.approx(0.1)
    assert row["bc_perfect_clone_over_random"] == pytest.approx(mechanisms.perfect_clone_over_random(0.5))
    # BC: deployments 2 and 3 only, each one's last epoch over its recorded reference
    assert row["bc_loss"] == pytest.approx(0.3) and row["bc_reference"] == "recorded"
    assert row["bc_loss_over_random"] == pytest.approx((0.2 / 1.0 + 0.4 / 1.5) / 2)
    assert row["policy_std_after_bc"] == pytest.approx(0.06)         # iteration 0 of each deployment
    assert row["sample_std"] == 0.1
    assert row["kl_over_delta"] == pytest.approx(np.mean([0.01 * k * d for k in (1, 2) for d in (1, 2, 3)]) / 0.05)
    assert row["step_fraction"] == pytest.approx(0.75)
    assert (row["imagined_return"], row["real_return"]) == (31.0, 11.0)  # last deployment, last iteration
    assert np.isnan(row["padding_share"]) and np.isnan(row["mopo_penalty"])
    padded = mechanisms.run_row(scalars(musbo_rows() + [(2, "policy", 0, "padding_share", 0.2),
                                                         (3, "policy", 0, "padding_share", 0.4)]),
                                METRICS, CFG, "bremen", "hopper")
    assert padded["padding_share"] == pytest.approx(0.3)
    policy_noise = mechanisms.run_row(scalars(musbo_rows()), METRICS,
                                      {**CFG, "trpo": {**CFG["trpo"], "sample_noise": "policy"}}, "musbo", "hopper")
    assert np.isnan(policy_noise["sample_std"])                      # sampled with the policy's own std


def test_bc_reference_is_derived_for_runs_that_did_not_record_it():
    s = scalars(musbo_rows(reference=False))
    row = mechanisms.run_row(s, METRICS, CFG, "musbo", "hopper")      # Hopper: 3 action entries
    min_std = np.exp(-5.0)
    # weights: B(1) labelled 1, then the eq. 9 means of B(2) (0.4) and B(3) (0.6)
    ref = [random_action_loss(3, np.mean([1.0, 0.4]), min_std), random_action_loss(3, np.mean([1.0, 0.4, 0.6]), min_std)]
    assert row["bc_reference"] == "derived"
    assert row["bc_loss_over_random"] == pytest.approx((0.2 / ref[0] + 0.4 / ref[1]) / 2)
    plain = mechanisms.run_row(s, METRICS, {**CFG, "policy": {"log_std": "global", "min_log_std": -5.0}}, "bremen", "hopper")
    assert plain["bc_random_action_loss"] == pytest.approx(0.5)       # weights 1, tanh mean: d / 6


def test_mopo_penalty_is_scaled_by_lambda_beside_the_model_reward():
    s = scalars([(d, "mopo_rollout", k, name, v) for d in (1, 2) for k in (0, 10)
                 for name, v in (("penalty_mean", 0.1 * d), ("model_reward_mean", 3.0))])
    row = mechanisms.run_row(s, METRICS.iloc[:2], CFG, "mopo", "hopper")
    assert row["mopo_penalty"] == pytest.approx(2.0 * 0.15) and row["mopo_model_reward"] == 3.0
    assert np.isnan(row["bc_loss"]) and np.isnan(row["kl_over_delta"]) and row["bc_reference"] == ""


def row(**values):
    base = dict.fromkeys(mechanisms.VALUES, np.nan)
    return {**base, "eq9_share_at_0": 0.0, "eq9_share_at_1": 0.1, "eq12_share_at_0": 0.0, "eq12_share_at_1": 0.5,
            "eq12_p10": 0.5, "eq12_p90": 1.0, "eq22_clipped_share": 0.1, "bc_loss_over_random": 0.3, **values}


def test_inactive_follows_the_degeneracy_rule_and_its_thresholds():
    assert mechanisms.inactive(row()) == []
    assert mechanisms.inactive(row(eq12_share_at_1=0.9, eq22_clipped_share=0.25, bc_loss_over_random=0.89)) == []
    found = {k: f"{value} {what}" for k, value, what in mechanisms.inactive(
        row(eq12_share_at_1=0.97, eq9_share_at_0=0.95, eq22_clipped_share=0.31, bc_loss_over_random=0.9))}
    assert set(found) == {"eq9", "eq12", "eq22", "bc"}
    assert found["eq12"] == "97 % of the imagined (eq. 12) labels within 0.01 of 1"
    assert found["eq9"] == "95 % of the eq. 9 labels within 0.01 of 0"
    assert found["eq22"].startswith("31 % of the action entries clipped") and found["bc"].startswith("0.90 = final BC")
    # eq. 12 shares not recorded (older runs): judged by the quantiles
    assert mechanisms.inactive(row(eq12_share_at_1=np.nan, eq12_p10=0.992))[0][0] == "eq12"
    assert mechanisms.inactive(row(eq12_share_at_1=np.nan, eq12_p10=0.98)) == []
    assert mechanisms.inactive(row(eq12_share_at_0=np.nan, eq12_p90=0.005))[0][0] == "eq12"
    assert mechanisms.inactive({**row(), **dict.fromkeys(mechanisms.VALUES, np.nan)}) == []  # nothing recorded


def test_perfect_clone_ratio_is_the_clipped_noise_over_uniform_random_actions():
    eps = np.random.default_rng(0).normal(size=(400_000,))
    for std in (0.1, 0.5, 0.9, 2.0):   # Monte Carlo: a clone of a mean-0 policy on noisy, env-clipped actions
        assert mechanisms.perfect_clone_over_random(std) == pytest.approx(
            np.mean(np.clip(std * eps, -1, 1) ** 2) / (1 / 3), rel=0.01)
    assert mechanisms.perfect_clone_over_random(0.9) > mechanisms.BC_RANDOM_LEVEL   # eq. 22 at Û ≈ 0.9
    assert mechanisms.perfect_clone_over_random(0.0) == 0.0
    assert np.isnan(mechanisms.perfect_clone_over_random(np.nan))                 # no eq. 22 noise recorded


def test_bc_is_not_judged_where_the_noise_alone_puts_a_perfect_clone_at_the_random_level():
    noisy = mechanisms.perfect_clone_over_random(0.9)                            # about 1.4
    assert mechanisms.inactive(row(bc_loss_over_random=1.3, bc_perfect_clone_over_random=noisy)) == []
    quiet = mechanisms.perfect_clone_over_random(0.1)
    assert [k for k, _, _ in mechanisms.inactive(row(bc_loss_over_random=1.3, bc_perfect_clone_over_random=quiet))] == ["bc"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    cfg = copy.deepcopy(load_profile("mini"))
    cfg["seeds"], cfg["ablation_seeds"] = [0, 1], [0]
    cfg["envs"], cfg["budgets"], cfg["readings"] = ["halfcheetah", "hopper"], ["500k"], []
    root = tmp_path_factory.mktemp("mechanisms") / "mini"
    write_fake_results(root, cfg, with_batches=False)
    s = Study(cfg, root)
    for key in [k for k in s.main_keys() if k.name == "musbo"]:     # eq. 12 degenerate on HalfCheetah only
        share = 0.97 if key.env == "halfcheetah" else 0.5
        scalars(musbo_rows(eq12_share_at_1=share)).to_csv(key.path(root) / "scalars.csv", index=False)
    return s


def test_table_is_the_mean_over_seeds_and_names_the_inactive_mechanisms(study):
    mech = mechanisms.table(Study(study.cfg, study.root))
    musbo = mech[mech.algo == "musbo"].set_index("env")
    assert set(mech.algo) == {"musbo"} and (musbo.seeds == 2).all()   # the other runs wrote no scalars.csv
    assert musbo.loc["halfcheetah", "eq12_share_at_1"] == pytest.approx(0.97)
    assert musbo.loc["halfcheetah", "inactive"] == "eq12" and musbo.loc["hopper", "inactive"] == ""


def test_musbo_vs_baseline_verdicts_carry_a_note_where_a_mechanism_was_inactive(study, tmp_path):
    s = Study(study.cfg, study.root)
    by_id = {c.id: c for c in claims.collect_claims(s)}
    assert by_id["C4c"].note == ("eq. 13 weighting inactive: 97 % (MUSBO HalfCheetah 500k) of the imagined (eq. 12) "
                                 "labels within 0.01 of 1; this verdict does not test the uncertainty weighting of "
                                 "TRPO (eqs. 12, 13)")                           # HalfCheetah 500k
    assert by_id["C2"].note == ""                                                            # Hopper: active
    assert "HalfCheetah 500k" in by_id["C15-500k"].note and "Hopper" not in by_id["C15-500k"].note
    assert by_id["C16"].note == ""                                   # MUSBO alone: no baseline comparison
    paths = claims.claims(s, tmp_path)
    text = (tmp_path / "claims.md").read_text()
    assert "## Mechanism activity" in text and "⚠ eq. 13 weighting inactive" in text
    assert tmp_path / "mechanisms.csv" in paths
    csv = pd.read_csv(tmp_path / "mechanisms.csv")
    assert list(csv.columns) == mechanisms.COLUMNS and len(csv) == 2
    assert "eq. 13 weighting inactive" in pd.read_csv(tmp_path / "claims.csv").set_index("id").loc["C4c", "note"]


def test_train_in_model_records_the_share_of_eq12_labels_at_each_bound():
    """What the eq. 12 rule reads: policy/eq12_share_at_0 and _at_1 per TRPO iteration."""
    from algos.config import resolve_run_config
    from algos.core.ensemble import DynamicsEnsemble
    from algos.core.model_trpo import make_policy, train_in_model
    from algos.core.scalars import Scalars

    cfg = resolve_run_config("smoke", "musbo", "halfcheetah", "500k", 0,
                             ["trpo.iterations=2", "trpo.rollout_length=10", "trpo.transitions_per_iteration=80"])
    torch.manual_seed(0)
    dynamics = DynamicsEnsemble(17, 6, members=2, hidden=(16,))
    policy = make_policy(cfg, 17, 6, torch.device("cpu"))
    starts = np.random.default_rng(0).standard_normal((20, 17)).astype(np.float32)
    scalars = Scalars()

    def labels(s, a):  # a quarter at 1 (within 0.01), a quarter at 0, the rest in between
        return torch.tensor([0.995, 0.003, 0.5, 0.7], dtype=s.dtype).repeat(len(s) // 4)
    train_in_model(policy, dynamics, starts, None, cfg, "per_step", torch.Generator().manual_seed(0), labels,
                   scalars=scalars)
    for bound in (0, 1):
        assert [r["value"] for r in scalars.rows if r["name"] == f"eq12_share_at_{bound}"] == [0.25, 0.25]
