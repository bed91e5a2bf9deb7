"""bench/calibrate.py (issue 20): the pass rule's verdict, the real-env lane TRPO reads, bad input,
and a smoke run at a tiny size with both sides (skipped without the calibrate extra)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import calibrate  # noqa: E402
from analysis.metrics import bootstrap_ci  # noqa: E402

SMOKE = ["--tiny", "--envs", "hopper", "--sac-envs", "halfcheetah", "--seeds", "0", "--trpo-steps", "1000",
         "--trpo-batch", "1000", "--trpo-eval-every", "1000", "--sac-steps", "300", "--sac-learning-starts", "100",
         "--sac-eval-every", "150", "--eval-episodes", "1"]


def test_verdict_passes_inside_or_above_the_peers_ci_and_fails_below_it():
    peer = [1000.0, 1100.0, 1200.0, 1150.0]
    low = bootstrap_ci(peer).low
    assert 1000.0 <= low < 1100.0
    assert calibrate.verdict([1100.0, 1110.0, 1120.0], peer) == "pass"      # inside
    assert calibrate.verdict([3000.0, 2900.0, 3100.0], peer) == "pass"      # above
    assert calibrate.verdict([low, low, low], peer) == "pass"               # on the low end
    assert calibrate.verdict([low - 1.0, low - 1.0], peer) == "fail"        # just below
    assert calibrate.verdict([200.0, 900.0, 5000.0], peer) == "pass"        # the mean decides, not each seed
    assert calibrate.verdict([500.0], [1000.0]).startswith("no verdict")    # one peer seed: no CI
    assert calibrate.verdict([], peer).startswith("no verdict")


def test_summary_puts_the_verdict_on_the_project_rows_and_marks_the_peer():
    def run(impl, seed, final):
        return {"algo": "sac", "env": "halfcheetah", "implementation": impl, "seed": seed, "mean_returns": [0.0, final]}
    runs = [run("stable-baselines3", s, f) for s, f in enumerate([100.0, 120.0, 140.0])]
    runs += [run("project", s, f) for s, f in enumerate([10.0, 20.0, 30.0])]
    rows = {r["implementation"]: r for r in calibrate.summarise(runs)}
    assert rows["project"]["verdict"] == "fail" and rows["project"]["final_mean"] == pytest.approx(20.0)
    assert rows["stable-baselines3"]["verdict"] == "peer" and rows["stable-baselines3"]["seeds"] == 3


def test_real_env_lane_ends_a_path_at_the_time_limit_and_goes_on_across_calls():
    env = calibrate.RealEnv("halfcheetah", seed=0)     # HalfCheetah never terminates: 1000-step episodes
    first = env.steps(lambda obs: np.full((1, 6), 2.0, np.float32), 999)
    assert not first["path_end"].any() and first["timestep"][-1] == 998
    assert (first["act"] == 2.0).all()                 # stored as the policy gave it (stepped clipped)
    second = env.steps(lambda obs: np.zeros((1, 6), np.float32), 2)
    assert second["path_end"].tolist() == [True, False] and second["timestep"].tolist() == [999, 0]
    assert not second["terminated"].any()              # a time limit is no termination


@pytest.mark.parametrize("args, message", [
    (["--trpo-eval-every", "1500"], "--trpo-eval-every 1500 must be a multiple of 2000"),
    (["--sac-learning-starts", "1000"], "leaves no SAC update"),
    (["--seeds", "0", "0"], "--seeds must be distinct"),
    (["--jobs", "0"], "--jobs must be 1 or more"),
])
def test_bad_input_is_one_line_before_any_run(tmp_path, capsys, args, message):
    assert calibrate.main(["--tiny", "--out", str(tmp_path / "c.json"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "c.json").exists()


def test_a_missing_peer_names_the_calibrate_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sb3_contrib", None)     # as on a machine without the extra
    assert calibrate.main(["--tiny", "--out", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err
    assert "sb3_contrib is not installed" in err and ".[calibrate]" in err and err.count("\n") == 1


def test_an_out_file_of_another_calibration_is_refused(tmp_path, capsys):
    pytest.importorskip("stable_baselines3", reason="needs the calibrate extra (make calibrate)")
    pytest.importorskip("sb3_contrib", reason="needs the calibrate extra (make calibrate)")
    out = tmp_path / "c.json"
    out.write_text(json.dumps({"sizes": {"trpo_steps": 1}, "hyperparameters": {}, "runs": []}))
    assert calibrate.main([*SMOKE, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds a calibration with other sizes" in err and err.count("\n") == 1


def test_readme_states_the_pass_rule_the_differences_and_the_committed_results():
    readme = (ROOT / "README.md").read_text()
    assert "\n## Calibration against trusted implementations\n" in readme
    section = " ".join(readme.split("\n## Calibration against trusted implementations\n")[1].split("\n## ")[0].split())
    assert calibrate.PASS_RULE in section and "make calibrate" in section
    # the README's table is the committed bench/calibration.json's: every row with 3 seeds, and its verdict
    summary = json.loads((ROOT / "bench" / "calibration.json").read_text())["summary"]
    for row in (r for r in summary if r["seeds"] >= 3):
        assert f"| {row['implementation']} | {row['final_mean']:.0f} [" in section, row
        assert row["verdict"] in ("pass", "peer") or "fail" in section, row
    for difference in calibrate.DIFFERENCES:
        assert " ".join(difference.split()) in section, difference
    assert calibrate.PASS_RULE in " ".join(calibrate.__doc__.split())


def test_smoke_both_sides_run_and_the_json_carries_both(tmp_path, capsys):
    pytest.importorskip("stable_baselines3", reason="needs the calibrate extra (make calibrate)")
    pytest.importorskip("sb3_contrib", reason="needs the calibrate extra (make calibrate)")
    out, figure = tmp_path / "calibration.json", tmp_path / "calibration.pdf"
    assert calibrate.main([*SMOKE, "--out", str(out), "--figure", str(figure)]) == 0
    doc = json.loads(out.read_text())
    ran = {(r["algo"], r["implementation"]) for r in doc["runs"]}
    assert ran == {("trpo", "project-linear"), ("trpo", "project-mlp"), ("trpo", "sb3-contrib"),
                   ("sac", "project"), ("sac", "project-sb3-numerics"), ("sac", "project-sb3-log-det"),
                   ("sac", "stable-baselines3")}
    for r in doc["runs"]:
        every = 1000 if r["algo"] == "trpo" else 150
        assert r["eval_steps"] == list(range(0, r["env_steps"] + 1, every))   # the same points on both sides
        assert all(len(returns) == 1 and np.isfinite(returns).all() for returns in r["returns"])
        assert r["cpu_seconds"] > 0 and r["train_cpu_seconds"] > 0
    assert {(s["algo"], s["implementation"]) for s in doc["summary"]} == ran
    assert doc["pass_rule"] == calibrate.PASS_RULE and doc["differences"] == calibrate.DIFFERENCES
    assert doc["estimate_full"]["cpu_hours"] > 0
    assert figure.read_bytes().startswith(b"%PDF")
    # a rerun into the same file goes on from its finished runs: nothing left to run
    capsys.readouterr()
    assert calibrate.main([*SMOKE, "--out", str(out), "--figure", str(figure)]) == 0
    assert "0 runs to do, 7 found" in capsys.readouterr().err
    assert len(json.loads(out.read_text())["runs"]) == 7
