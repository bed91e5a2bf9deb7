"""bench/profile_run.py's summary of a py-spy raw profile (the profiler itself runs in bench/ only)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

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
