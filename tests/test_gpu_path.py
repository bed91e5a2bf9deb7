"""bench/gpu_check.sh (issue 15): the GPU check runs its whole path on CPU at tiny sizes, with
gymnasium, MuJoCo and dm_control made unimportable (a GPU machine may have none of them), and
writes the figures it promises."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_without_the_simulators(tmp_path):
    blockers = tmp_path / "blockers"
    blockers.mkdir()
    for name in ("gymnasium", "mujoco", "dm_control"):
        (blockers / f"{name}.py").write_text(f"raise ImportError('{name} is not installed on this machine')\n")
    out = tmp_path / "results_cuda.json"
    env = {"PYTHONPATH": str(blockers), "PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--device", "cpu", "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["heavy_modules_imported"] == []
    for shape in ("200x250", "50x1000"):
        assert set(results["per_step_us"][shape]) == {"legacy", "eager"}
        assert results["syncs_per_step"][shape]["eager"] == 0          # the new loop never syncs
        assert results["syncs_per_step"][shape]["legacy"] >= 1         # int() of the member, every step
    assert results["trpo_iteration_s"] > 0
    assert results["model_fit_epoch"]["dynamics"]["epoch_s"] > 0
    for env in ("walker2d", "hopper", "halfcheetah", "ant", "cheetah-run"):
        assert results["projection_hours"][env]["run_hours"] > 0
    assert results["projection_hours"]["hopper"]["sequential_steps"] == 10 * 6000 * 1000


def test_gpu_steps_bench_times_every_variant_and_puts_adam_back(tmp_path):
    """bench/bench_gpu_steps.py: BC (foreach vs fused Adam) and SAC (with vs without its host
    syncs) on CPU at a few steps; the fused row swaps torch.optim.Adam for its loop only."""
    import torch
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_gpu_steps

    adam = torch.optim.Adam
    assert bench_gpu_steps.bc_ms(torch.device("cpu"), 3, 1, fused=True) > 0
    assert torch.optim.Adam is adam
    out = tmp_path / "steps.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu_steps.py"), "--device", "cpu", "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    for key in ("bc_foreach_ms", "bc_fused_ms", "sac_update_ms", "sac_update_no_sync_ms"):
        assert results[key] > 0, key
