"""The bench scripts' logic (profile summaries, learning check, ladder runner, probes); the speed they measure is not tested here."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import handoff  # noqa: E402
import probe_policy  # noqa: E402
import profile_run  # noqa: E402


def test_profile_summary_shares_are_per_function_and_count_each_sample_once(tmp_path):
    root = profile_run.ROOT
    raw = tmp_path / "raw.txt"
    raw.write_text(
        f"main ({root}/algos/run.py:10);fit ({root}/algos/core/ensemble.py:5);bmm (/x/site-packages/torch/f.py:1) 6\n"
        f"main ({root}/algos/run.py:10);fit ({root}/algos/core/ensemble.py:7);fit ({root}/algos/core/ensemble.py:9) 2\n"
        f"main ({root}/algos/run.py:12);step (/x/site-packages/mujoco/m.py:3) 2\n")
    text = profile_run.summarise(raw)
    assert "samples: 10" in text
    assert " 100.0 %  main (algos/run.py)" in text           # lines 10 and 12: one function
    assert "  80.0 %  fit (algos/core/ensemble.py)" in text   # recursion counted once per sample
    assert "  60.0 %  bmm (torch/f.py)" in text               # self time of the leaf frame
    assert "step (mujoco/m.py)" in text.split("self share")[1]


def test_learning_check_puts_the_previous_check_beside_each_env_and_algo(tmp_path):
    import json

    import pandas as pd
    import pytest

    import learning_check
    previous = tmp_path / "previous.json"
    previous.write_text(json.dumps({"per_run": [], "summary": [
        {"env": "hopper", "algo": "musbo", "last_deployment": 231.5, "last_sd": 36.6},
        {"env": "hopper", "algo": "bremen", "last_deployment": 265.0, "last_sd": 40.0}]}))
    now = pd.DataFrame([{"env": "hopper", "algo": "bremen"}, {"env": "hopper", "algo": "mopo"},
                        {"env": "hopper", "algo": "musbo"}])
    both = learning_check.side_by_side(now, previous)
    assert list(both.algo) == ["bremen", "mopo", "musbo"]      # this check's order, pair by pair
    assert both.previous_last.tolist()[0] == 265.0 and both.previous_last.tolist()[2] == 231.5
    assert pd.isna(both.previous_last.tolist()[1])              # a pair the previous check lacked
    with pytest.raises(SystemExit, match="does not exist"):
        learning_check.side_by_side(now, tmp_path / "nothing.json")
    # a previous file that was itself made with --previous carries previous_* columns of its own:
    # only its own last-deployment numbers are taken, one column each
    chained = tmp_path / "chained.json"
    chained.write_text(json.dumps({"per_run": [], "summary": [
        {"env": "hopper", "algo": "bremen", "last_deployment": 199.0, "last_sd": 10.0,
         "previous_last_deployment": 265.0, "previous_last_sd": 40.0}]}))
    both = learning_check.side_by_side(now, chained)
    assert list(both.columns) == ["env", "algo", "previous_last", "previous_last_sd"]
    assert both.previous_last.tolist()[0] == 199.0 and both.previous_last_sd.tolist()[0] == 10.0


def test_paper_deployment_tiny_stops_after_deployment_2_and_records_every_field(tmp_path):
    """bench/paper_deployment.py --tiny: the run (deployments=3) is stopped right after deployment 2,
    the reductions are applied and recorded, and every reported field is there (no timing check)."""
    import json
    import math
    import subprocess

    run_dir, out = tmp_path / "run", tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(profile_run.ROOT / "bench" / "paper_deployment.py"), "--tiny",
                           "--trpo-iterations", "3", "--keep", str(run_dir), "--json", str(out)],
                          capture_output=True, text=True, cwd=profile_run.ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trpo.iterations = 3 (REDUCED" in proc.stderr            # every reduction is printed
    r = json.loads(out.read_text())
    assert (r["profile"], r["deployments_configured"], r["deployments_run"]) == ("smoke", 3, 2)
    assert r["reductions"]["trpo.iterations"] == {"profile": 2, "used": 3}
    assert r["reductions"]["dynamics.max_epochs"] == {"profile": 3, "used": 2}
    assert "trpo.iterations=3" in r["command_overrides"]
    # stopped after the checkpoint of deployment 2: nothing of deployment 3, no result files
    assert (run_dir / "checkpoints" / "deployment_2.pt").is_file()
    assert not (run_dir / "batches" / "deployment_3.npz").exists() and not (run_dir / "metrics.csv").exists()
    assert sorted(r["deployments"]) == ["1", "2"]
    for d, row in r["deployments"].items():
        assert set(row["phases_s"]) == {"collect", "labeler", "model", "bc", "policy", "eval"}
        assert all(math.isfinite(v) and v >= 0 for v in row["phases_s"].values())
        assert row["samples_total"] == r["batch_size"] * int(d) == 333 * int(d)   # 1000 / 3 per batch
        assert row["trpo_iterations"] == 3                                        # the reduction took effect
        assert row["imagined_samples_per_iteration"] == r["imagined_samples_per_iteration_configured"] == 400
        assert 1 <= row["model_epochs"] <= 2 and 1 <= row["labeler_epochs"] <= 2 and 1 <= row["bc_epochs"] <= 2
        assert row["bc_steps"] > 0 and row["policy_s_per_trpo_iteration"] >= 0 and row["model_s_per_epoch"] >= 0
    assert r["phases_s_total"]["policy"] == sum(row["phases_s"]["policy"] for row in r["deployments"].values())
    assert r["wall_s"] > 0 and r["peak_rss_mib"] > 50                          # a torch process: > 50 MiB
    assert r["machine"]["cpu_count"] >= 1 and r["machine"]["torch_threads"] >= 1 and r["machine"]["device"] == "cpu"


def test_eq12_inrun_judges_each_distance_by_the_readings_rule(tmp_path):
    """bench/eq12_inrun.py: a batch with p10 >= 0.99 has >= 90 % of its labels within 0.01 of 1;
    pooled over batches the quantiles bound the share (undecided between), recorded shares decide."""
    import numpy as np
    import pandas as pd
    import pytest
    import yaml

    import eq12_inrun
    low, high = eq12_inrun.share_bounds(np.array([0.995, 0.98]), np.array([0.998, 0.995]), np.array([0.999, 0.999]))
    assert (low, high) == (0.7, 0.95)                                   # (0.9 + 0.5) / 2, (1 + 0.9) / 2
    assert eq12_inrun.share_bounds(np.array([0.0]), np.array([0.005]), np.array([0.02]), at_one=False) == (0.5, 0.9)

    def run(folder, distance, rows):
        d = tmp_path / folder
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(yaml.safe_dump({"algo": "musbo", "env": "hopper", "musbo": {
            "eq12_distance": distance, "alpha": 0.028, "uncertainty_weighting": True}}))
        pd.DataFrame([{"deployment": 1, "phase": phase, "step": step, "name": name, "value": value}
                      for phase, step, name, value in rows]).to_csv(d / "scalars.csv", index=False)
    quantiles = lambda step, p10: [("policy", step, "eq12_p10", p10), ("policy", step, "eq12_p50", 0.999),  # noqa: E731
                                   ("policy", step, "eq12_p90", 1.0)]
    run("std_sum/seed0", "std_sum", quantiles(0, 0.995) + quantiles(1, 0.995))          # every batch >= 90 %
    run("raw/seed0", "raw", quantiles(0, 0.995) + quantiles(1, 0.98))                   # bounds 0.7-0.95
    measured = [(eq12_inrun.PHASE, 0, f"eq12_{d}_{q}", v) for d in eq12_inrun.DISTANCES
                for q, v in (("p10", 0.9), ("p50", 0.95), ("p90", 0.99), ("share_at_0", 0.0),
                             ("share_at_1", {"raw": 0.95, "std_sum": 0.5, "std_mean": 0.9}[d]))]
    run("measured/seed0", "std_sum", measured + [(eq12_inrun.PHASE, 0, f"median_d_{d}", 0.5)
                                                 for d in eq12_inrun.DISTANCES])
    summary = eq12_inrun.summarise(eq12_inrun.collect([tmp_path])).set_index(["source", "distance"])
    assert summary.degenerate[("policy", "raw")] == "undecided"
    assert summary.degenerate[("policy", "std_sum")] == "yes" and summary.batches_degenerate[("policy", "std_sum")] == 1
    measured = summary.loc[eq12_inrun.PHASE]
    assert measured.degenerate.to_dict() == {"raw": "yes", "std_sum": "no", "std_mean": "no"}   # > 90 %, not >=
    assert measured.calibrated_alpha["raw"] == pytest.approx(np.log(2) / 0.5)
    assert "| measured, every distance | hopper | raw |" in eq12_inrun.markdown(summary.reset_index())


def test_eq12_inrun_measure_records_every_distance_at_the_runs_own_imagined_samples(tmp_path):
    """A smoke MUSBO run under `measure`: per TRPO iteration the labels of every distance, the run's
    own distance equal to what the run itself records (the same samples and member pairs)."""
    import pandas as pd
    import yaml

    import eq12_inrun
    eq12_inrun.measure(["hopper"], [0], tmp_path, "smoke")
    run = tmp_path / "runs" / "musbo" / "hopper" / "500k" / "seed0"
    own = yaml.safe_load((run / "config.yaml").read_text())["musbo"]["eq12_distance"]
    s = pd.read_csv(run / "scalars.csv")
    policy = s[(s.phase == "policy") & (s.name == "eq12_p10")].value.to_numpy()
    measured = s[(s.phase == eq12_inrun.PHASE) & (s.name == f"eq12_{own}_p10")].value.to_numpy()
    assert len(policy) > 0 and list(policy) == list(measured)
    names = set(s[s.phase == eq12_inrun.PHASE].name)
    assert {f"eq12_{d}_share_at_1" for d in eq12_inrun.DISTANCES} | {f"median_d_{d}" for d in eq12_inrun.DISTANCES} <= names
    from algos.musbo import MUSBO
    assert MUSBO.eq12_distance.__name__ == "eq12_distance"                    # the recording wrapper is gone


def test_clear_gain_over_random_is_the_mean_gain_above_two_standard_errors():
    """The one rule behind learning_check's "clear_gain_over_random" and the medium ladder's gating pairs."""
    import learning_check
    assert learning_check.clear_gain_over_random([100.0, 110.0, 90.0]) is True      # se 5.8, mean 100
    assert learning_check.clear_gain_over_random([300.0, -20.0, -10.0]) is False    # se 105, mean 90
    assert learning_check.clear_gain_over_random([-5.0, -6.0, -4.0]) is False
    assert learning_check.clear_gain_over_random([50.0]) is None                    # no standard error


def test_run_each_starts_no_run_after_one_fails():
    """learning_check and the medium ladder: a failed (or stopped) run stops the queue; the runs
    already going finish, and the failure reaches the caller."""
    import learning_check
    started = []

    def start(name):
        started.append(name)
        if name == "b":
            raise SystemExit("b exited 75")
    with pytest.raises(SystemExit, match="b exited 75"):
        learning_check.run_each(start, [("a",), ("b",), ("c",), ("d",)], jobs=1)
    assert started == ["a", "b"]
    started.clear()
    learning_check.run_each(start, [("a",), ("c",)], jobs=2)
    assert sorted(started) == ["a", "c"]


def test_probe_policy_acts_as_the_eval_did_and_imagines_only_for_trpo_runs(tmp_path):
    """bench/probe_policy.py on finished smoke MUSBO and MOPO runs: over a whole episode the real
    rollout is the run's first eval episode of the last deployment (same policy, same start state);
    MUSBO gets one imagined rollout per dynamics member, MOPO none; a directory
    without a run gets a one-line error."""
    import subprocess

    import pandas as pd
    import yaml

    def smoke_run(algo):
        run = tmp_path / algo / "seed3"
        proc = subprocess.run([sys.executable, "-m", "algos.run", "--algo", algo, "--env", "hopper", "--budget",
                               "250k", "--seed", "3", "--profile", "smoke", "--out", str(run)],
                              cwd=profile_run.ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        r = probe_policy.probe(run, steps=cfg["max_episode_steps"])
        evals = pd.read_csv(run / "eval_returns.csv")
        first = evals[(evals.deployment == cfg["deployments"]) & (evals.episode == 0)].iloc[0]
        assert r["deployment"] == cfg["deployments"] and r["real"]["return"] == pytest.approx(first["return"], rel=1e-6)
        assert 1 <= r["real"]["steps"] <= cfg["max_episode_steps"] and np.isfinite(r["real"]["mean_x_velocity"])
        return run, cfg, r

    run, cfg, r = smoke_run("musbo")
    assert [m["member"] for m in r["imagined"]] == list(range(cfg["dynamics"]["members"]))
    assert all(1 <= m["steps"] <= cfg["max_episode_steps"] and np.isfinite(m["return"]) for m in r["imagined"])
    # --steps bounds the real and every imagined rollout
    short = probe_policy.probe(run, steps=3)
    assert short["steps"] == 3 and short["real"]["steps"] <= 3 and all(m["steps"] <= 3 for m in short["imagined"])

    assert smoke_run("mopo")[2]["imagined"] == []
    with pytest.raises(SystemExit, match="has no config.yaml; pass a run directory"):
        probe_policy.probe(tmp_path)


def test_handoff_replays_the_run_up_to_deployment_ds_trpo_and_scores_both_policies(tmp_path):
    """bench/handoff.py on a smoke MUSBO config: the replay is the run (pi_prev's real return is
    the run's own eval return of deployment D-1), every score is finite, the clone is not pi_prev,
    the counterfactual newest-batch clone is there; nothing is written beside the config; a MOPO
    config and a deployment out of range get one-line errors."""
    import subprocess

    import pandas as pd
    import yaml

    run = tmp_path / "seed4"
    proc = subprocess.run([sys.executable, "-m", "algos.run", "--algo", "musbo", "--env", "hopper", "--budget",
                           "250k", "--seed", "4", "--profile", "smoke", "--out", str(run)],
                          cwd=profile_run.ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = sorted(p.name for p in run.rglob("*"))
    r = handoff.handoff(run / "config.yaml", 2)
    assert sorted(p.name for p in run.rglob("*")) == before
    metrics = pd.read_csv(run / "metrics.csv")
    assert r["prev"]["real_return"] == pytest.approx(metrics.eval_return_mean[metrics.deployment == 1].item(), rel=1e-6)
    for who in ("prev", "clone", "newest_clone"):
        assert all(np.isfinite(v) for v in r[who].values()), who
    assert r["clone"]["mean_abs_action_on_newest"] != r["prev"]["mean_abs_action_on_newest"]
    assert 0 < r["batch"]["newest_label_mean"] <= 1

    assert handoff.engine_of(run / "config.yaml") == "eager"  # the engine the run recorded, replayed
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    with pytest.raises(SystemExit, match=f"--deployment must be in 2..{cfg['deployments']}"):
        handoff.handoff(run / "config.yaml", 1)
    (tmp_path / "mopo.yaml").write_text(yaml.safe_dump({**cfg, "algo": "mopo"}, sort_keys=False))
    with pytest.raises(SystemExit, match="is a mopo run; only musbo, bremen clone a policy"):
        handoff.handoff(tmp_path / "mopo.yaml", 2)


def test_handoff_replays_a_run_under_the_rollout_engine_it_recorded(tmp_path):
    """provenance.json's rollout_engine per deployment; none recorded (runs before session 11):
    eager; several: no exact replay, a one-line error; no provenance yet: auto."""
    import json

    def engine(*recorded):
        (tmp_path / "seed0").mkdir(exist_ok=True)
        (tmp_path / "seed0" / "provenance.json").write_text(json.dumps(
            {"deployments": [{"deployment": d + 1, **({} if e is None else {"rollout_engine": e})}
                             for d, e in enumerate(recorded)]}))
        return handoff.engine_of(tmp_path / "seed0.run_config.yaml")
    assert handoff.engine_of(tmp_path / "seed0" / "config.yaml") == "auto"
    assert engine("compiled", "compiled") == "compiled"
    assert engine(None, None) == "eager"
    with pytest.raises(SystemExit, match="records several rollout engines \\(compiled, eager\\)"):
        engine("eager", "compiled")


def test_medium_engine_times_both_engines_at_the_medium_run_sizes_and_projects_a_run(tmp_path, monkeypatch):
    """bench/medium_engine.py --quick, with torch.compile as the identity (the compiled engine's
    numbers are tests/test_rollouts.py's business): both engines timed, the run's own sizes read
    from config/medium.yaml, the file written atomically."""
    import json

    import torch

    import medium_engine
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    out = medium_engine.main(["--quick", "--envs", "hopper", "--repeats", "1", "--out", str(tmp_path / "e.json")])
    assert json.loads((tmp_path / "e.json").read_text()) == json.loads(json.dumps(out))
    row = out["envs"]["hopper"]
    assert row["iterations_per_run"] == 10 * 300 and row["sequential_steps"] == 10 * 300 * 1000  # medium Hopper
    for engine in ("eager", "compiled"):
        e = row["engines"][engine]
        assert e["iteration_s"] > 0 and e["compile_s"] >= 0
        assert e["run_policy_min"] == pytest.approx((3000 * e["iteration_s"] + e["compile_s"]) / 60)
    assert row["iteration_speedup"] == pytest.approx(row["engines"]["eager"]["iteration_s"]
                                                     / row["engines"]["compiled"]["iteration_s"])


def test_medium_engine_grid_splits_each_cells_trpo_minutes_by_the_engine_each_deployment_ran(tmp_path):
    """--grid reads the committed runs only: per-deployment policy_s under the engine provenance.json
    records (no field: eager, the CPU's `auto` before the compiled engine), MOPO left out."""
    import json

    import medium_engine

    def run(algo, seed, policy_s, engines):
        d = tmp_path / "runs" / algo / "hopper" / "500k" / f"seed{seed}"
        d.mkdir(parents=True)
        lines = ["deployment,policy_s"] + [f"{i + 1},{s}" for i, s in enumerate(policy_s)]
        (d / "metrics.csv").write_text("\n".join(lines) + "\n")
        deployments = [{"deployment": i + 1, **({"rollout_engine": e} if e else {})} for i, e in enumerate(engines)]
        (d / "provenance.json").write_text(json.dumps({"deployments": deployments}))

    run("musbo", 0, [300, 360], [None, None])
    run("musbo", 1, [240, 120], [None, "compiled"])
    run("mopo", 0, [900, 900], [None, None])
    (tmp_path / "runs" / "musbo" / "hopper" / "500k" / "seed2").mkdir()  # unfinished: no metrics.csv
    out = medium_engine.main(["--grid", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "g.json")])
    assert json.loads((tmp_path / "g.json").read_text()) == json.loads(json.dumps(out))
    assert list(out["cells"]) == ["musbo hopper"]
    cell = out["cells"]["musbo hopper"]
    assert cell["eager"] == {"deployments": 3, "seeds": [0, 1], "policy_min_per_deployment": pytest.approx(5.0)}
    assert cell["compiled"] == {"deployments": 1, "seeds": [1], "policy_min_per_deployment": pytest.approx(2.0)}
    assert cell["speedup"] == pytest.approx(2.5)
