"""The run CLI end to end on the smoke profile: the output contract, resume after SIGKILL with
bit-identical results, determinism, and bad inputs rejected before any work."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
TIMING = ["collect_s", "model_s", "labeler_s", "bc_s", "policy_s", "eval_s"]


def run_cli(out, *extra, algo="musbo", env="halfcheetah", kill_at=None, check=True):
    cmd = [sys.executable, "-m", "algos.run", "--algo", algo, "--env", env, "--budget", "250k", "--seed", "3",
           "--profile", "smoke", "--out", str(out), *extra]
    environ = {**os.environ, "MUSBO_KILL_AT": kill_at or ""}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=environ, timeout=600)
    if check and kill_at is None:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def results(out):
    """Everything a run produces that must not depend on interruptions (timings excluded)."""
    metrics = pd.read_csv(out / "metrics.csv").drop(columns=TIMING)
    batches = {p.name: p.read_bytes() for p in sorted((out / "batches").glob("*.npz"))}
    return metrics, pd.read_csv(out / "eval_returns.csv"), pd.read_csv(out / "model_eval.csv"), batches


def assert_same_results(out, reference):
    for ours, theirs in zip(results(out), results(reference)):
        if isinstance(ours, dict):
            assert ours == theirs                             # batches bit-identical
        else:
            pd.testing.assert_frame_equal(ours, theirs)


def snapshot(out):
    """Every file under `out` with its bytes: equal snapshots = nothing was written."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(Path(out).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    run_cli(out)
    return out


def test_output_contract(reference):
    cfg = yaml.safe_load((reference / "config.yaml").read_text())
    metrics = pd.read_csv(reference / "metrics.csv")
    assert list(metrics.columns) == ["deployment", "samples_total", "eval_return_mean", "eval_return_std",
                                     "eval_episodes"] + TIMING
    assert metrics["deployment"].tolist() == list(range(1, cfg["deployments"] + 1))
    assert metrics["samples_total"].tolist() == [cfg["batch_size"] * i for i in metrics["deployment"]]
    assert (metrics["eval_episodes"] == cfg["eval_episodes"]).all()
    evals = pd.read_csv(reference / "eval_returns.csv")
    assert len(evals) == (cfg["deployments"] + 1) * cfg["eval_episodes"]     # deployment 0: the random policy
    trained = evals[evals.deployment > 0]
    np.testing.assert_allclose(trained.groupby("deployment")["return"].mean(), metrics["eval_return_mean"])
    assert evals[evals.deployment == 0]["return"].std() > 0                  # random episodes differ
    model_eval = pd.read_csv(reference / "model_eval.csv")
    assert list(model_eval.columns) == ["deployment", "energy_distance", "trajectory_mse"]
    assert (model_eval[["energy_distance", "trajectory_mse"]] >= 0).all().all()
    for i in metrics["deployment"]:
        with np.load(reference / "batches" / f"deployment_{i}.npz") as batch:
            assert len(batch["obs"]) == cfg["batch_size"]
            assert batch["obs"].dtype == np.float32 and batch["terminated"].dtype == bool
    from analysis.metrics import cosine_novelty
    novelty = pd.read_csv(reference / "novelty.csv")
    obs = [np.load(reference / "batches" / f"deployment_{i}.npz")["obs"] for i in metrics["deployment"]]
    assert novelty["deployment"].tolist() == list(range(2, cfg["deployments"] + 1))
    for i, sim in zip(novelty["deployment"], novelty["cosine_similarity"]):
        assert sim == pytest.approx(cosine_novelty(obs[i - 1], np.concatenate(obs[: i - 1])), rel=1e-9)
    from algos.core.novelty import NOVELTY_COLUMNS, nearest_cosine_per_deployment
    assert list(novelty.columns) == list(NOVELTY_COLUMNS)      # both readings of Table 1
    np.testing.assert_allclose(novelty["nn_cosine_similarity"], nearest_cosine_per_deployment(obs, "cpu"), rtol=1e-6)
    scalars = pd.read_csv(reference / "scalars.csv")           # the diagnostics, every deployment
    assert list(scalars.columns) == ["deployment", "phase", "step", "name", "value"]
    assert sorted(scalars["deployment"].unique()) == list(range(1, cfg["deployments"] + 1))
    lengths = scalars.query("phase == 'eval' and name == 'episode_length_mean'")
    assert lengths["deployment"].tolist() == metrics["deployment"].tolist()
    assert (lengths["value"] == cfg["max_episode_steps"]).all()  # HalfCheetah: every episode runs to the limit
    gaps = scalars.query("phase == 'bc' and name == 'handoff_gap'")  # none at deployment 1: B(1) is random
    assert gaps["deployment"].tolist() == list(range(2, cfg["deployments"] + 1)) and (gaps["value"] > 0).all()
    provenance = json.loads((reference / "provenance.json").read_text())
    assert provenance["seed"] == 3 and provenance["device"] == "cpu" and provenance["packages"]["torch"]
    assert {"git_commit", "start_time", "end_time"} <= set(provenance)
    # checkpoints load with weights_only=True (no pickle of run data)
    for path in (reference / "checkpoints").glob("*.pt"):
        torch.load(path, weights_only=True)


@pytest.mark.parametrize("kill_at", ["policy:2", "collect:2", "model:2", "write:0"])
def test_sigkill_then_rerun_resumes_and_matches(reference, tmp_path, kill_at):
    killed = run_cli(tmp_path, kill_at=kill_at)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp_path / "metrics.csv").exists()           # complete only when the run is
    resumed = run_cli(tmp_path)
    assert "resuming after deployment" in resumed.stderr
    assert_same_results(tmp_path, reference)


def test_rerunning_a_complete_run_trains_nothing_and_rewrites_the_same_results(reference, tmp_path):
    # what Snakemake does to a job killed after its metrics.csv, before it recorded the job done
    shutil.copytree(reference, tmp_path / "run")
    out = tmp_path / "run"
    (out / "run.lock").unlink(missing_ok=True)
    checkpoints = snapshot(out / "checkpoints")
    batch_mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "batches").glob("*.npz")}
    rerun = run_cli(out)
    deployments = len(pd.read_csv(reference / "metrics.csv"))
    assert f"resuming after deployment {deployments}" in rerun.stderr
    assert "collect" not in rerun.stderr.split("resuming after deployment")[1].split("finished in")[0]
    assert snapshot(out / "checkpoints") == checkpoints
    assert {p.name: p.stat().st_mtime_ns for p in (out / "batches").glob("*.npz")} == batch_mtimes
    assert_same_results(out, reference)


def test_corrupted_batch_is_detected_and_redone(reference, tmp_path):
    run_cli(tmp_path, kill_at="write:0")
    batch = tmp_path / "batches" / "deployment_2.npz"
    batch.write_bytes(batch.read_bytes()[:100])               # truncated
    resumed = run_cli(tmp_path)
    assert "missing or corrupted" in resumed.stderr
    assert results(tmp_path)[3] == results(reference)[3]


def test_same_seed_same_results_on_cpu(reference, tmp_path):
    run_cli(tmp_path)
    pd.testing.assert_frame_equal(results(tmp_path)[0], results(reference)[0])


@pytest.mark.parametrize("args, message", [
    (["--algo", "sac"], "invalid choice: 'sac'"),
    (["--env", "humanoid"], "invalid choice: 'humanoid'"),
    (["--budget", "1m"], "invalid choice: '1m'"),
    (["--profile", "tiny"], "unknown profile 'tiny'"),
    (["--seed", "x"], "invalid int value: 'x'"),
    (["--set", "trpo.detla=0.1"], "did you mean 'trpo.delta'"),
    (["--set", "trpo.iterations=-1"], "must not be negative"),
    (["--set", "dynamics.hidden=[0, 10]"], "must be positive"),
    (["--set", "musbo.uncertainty_weighting=maybe"], "must be bool"),
])
def test_bad_inputs_fail_fast_naming_the_problem(tmp_path, capsys, args, message):
    base = {"--algo": "musbo", "--env": "hopper", "--budget": "500k", "--seed": "0", "--profile": "smoke",
            "--out": str(tmp_path / "out")}
    extra = []
    if args[0] == "--set":
        extra = args
    else:
        base[args[0]] = args[1]
    code, err = main_here(capsys, *[x for kv in base.items() for x in kv], *extra)
    assert code == 2 and message in err, err
    assert not (tmp_path / "out").exists()                   # nothing written


def test_unwritable_output_directory_is_named(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    err = refused(capsys, blocker / "run")
    assert "is not writable" in err and "--out" in err


def test_a_different_config_in_the_same_directory_is_refused(reference, tmp_path, capsys):
    run_cli(tmp_path, kill_at="write:0")
    before = snapshot(tmp_path)
    code, err = main_here(capsys, "--algo", "musbo", "--env", "halfcheetah", "--budget", "250k", "--seed", "3",
                          "--profile", "smoke", "--out", str(tmp_path), "--set", "trpo.delta=0.2")
    assert code == 2 and "holds another run (config hash" in err and "--replace-stale" in err
    assert snapshot(tmp_path) == before                      # config.yaml, identity.json: untouched


def test_non_finite_values_stop_the_run_naming_phase_deployment_and_seed():
    from algos.run import PhaseTimer, RunError
    timer = PhaseTimer("[musbo hopper 500k seed7]", 0.0)
    timer.reset(2)
    with pytest.raises(RunError) as err:
        with timer("model"):
            raise FloatingPointError("non-finite loss (phase=model)")
    assert "phase=model" in str(err.value) and "deployment=2" in str(err.value) and "seed7" in str(err.value)
    assert "no checkpoint" in str(err.value)


def test_a_nan_inside_a_real_run_exits_with_the_message(tmp_path, monkeypatch, capsys):
    """A NaN prediction during the eval replay: the CLI stops with exit code 2, names the phase."""
    import algos.run as run_module
    from algos.core.ensemble import DynamicsEnsemble
    monkeypatch.setattr(DynamicsEnsemble, "predict_trajectory",
                        lambda self, obs0, actions, **kw: torch.full((len(obs0), actions.shape[1], obs0.shape[1]), float("nan")))
    code = run_module.main(["--algo", "bremen", "--env", "halfcheetah", "--budget", "250k", "--seed", "5",
                            "--profile", "smoke", "--out", str(tmp_path)])
    assert code == 2
    message = capsys.readouterr().err
    assert "phase=eval deployment=1" in message and "seed5" in message
    assert not (tmp_path / "metrics.csv").exists()


def test_model_replay_batches_equal_length_episodes_without_changing_fig6():
    """evaluate() replays episodes of equal length as one batch; Fig. 6's numbers must equal
    those of one replay per episode (Hopper: random episodes of different lengths)."""
    from algos.config import resolve_run_config
    from algos.core.ensemble import DynamicsEnsemble
    from algos.core.training import ModelTrainer, Patience
    from algos.core.model_eval import energy_distance, trajectory_mse
    from algos.run import evaluate
    from envs.collector import collect

    cfg = {**resolve_run_config("smoke", "bremen", "hopper", "250k", 0, []), "eval_episodes": 6, "max_episode_steps": 27,
           "model_eval_episodes": 6}
    torch.manual_seed(0)
    model = DynamicsEnsemble(11, 3, members=2, hidden=[16])
    data = collect("hopper", 500, None, seed=0)
    ModelTrainer(lr=1e-3, batch_size=256).fit(model, data, None, Patience(3, max_epochs=1), torch.Generator().manual_seed(0))

    class Algo:
        def eval_policy(self):
            return lambda obs: np.sin(obs[:, :3] * 7.0)  # a fixed policy; Hopper falls at different times

        def dynamics_model(self):
            return model

    box = (np.full(11, -10.0, np.float32), np.full(11, 10.0, np.float32))
    episodes, row = evaluate(cfg, Algo(), 1, box)
    lengths = [len(ep["act"]) for ep in episodes]
    assert len(set(lengths)) > 1 and len(lengths) > len(set(lengths))  # mixed: some groups, some singles
    with torch.no_grad():
        imagined = [model.predict_trajectory(ep["obs"][:1], ep["act"][None], clip_obs=box)[0].numpy()
                    for ep in episodes]
    real = [ep["next_obs"] for ep in episodes]
    assert row["energy_distance"] == pytest.approx(energy_distance(np.concatenate(imagined), np.concatenate(real)),
                                                   rel=1e-5)
    assert row["trajectory_mse"] == pytest.approx(trajectory_mse(imagined, real), rel=1e-5)


# ---------------------------------------------------------------- issue 16: the run directory's promises
# (bremen: the fastest algorithm on smoke; halfcheetah smoke has 2 deployments). A subprocess where
# the test kills the run or needs a fresh process; otherwise main() in this process (faster).
BREMEN = ["--algo", "bremen", "--env", "halfcheetah", "--budget", "250k", "--profile", "smoke"]


def bremen(out, *extra, seed="3", kill_at=None, env=None, check=True):
    cmd = [sys.executable, "-m", "algos.run", *BREMEN, "--seed", seed, "--out", str(out), *extra]
    environ = {**os.environ, "MUSBO_KILL_AT": kill_at or "", **(env or {})}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=environ, timeout=600)
    if check and kill_at is None:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def main_here(capsys, *argv):
    """(exit code, stderr) of `python -m algos.run ARGV`, run in this process."""
    import algos.run as run_module
    capsys.readouterr()
    try:
        code = run_module.main(list(argv))
    except SystemExit as exit_:  # argparse
        code = exit_.code
    return code, capsys.readouterr().err


def refused(capsys, out, *extra, seed="3"):
    code, err = main_here(capsys, *BREMEN, "--seed", seed, "--out", str(out), *extra)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err   # one line
    return err


def test_identity_is_written_first_and_names_the_run(tmp_path):
    proc = bremen(tmp_path, kill_at="collect:1")              # killed before any deployment work
    assert proc.returncode == -9
    identity = json.loads((tmp_path / "identity.json").read_text())
    from algos.config import config_hash
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert identity == {"algo": "bremen", "env": "halfcheetah", "budget": "250k", "seed": 3, "profile": "smoke",
                        "config_hash": config_hash(cfg)}


def test_another_seed_on_a_committed_run_without_checkpoints_is_refused_before_any_write(reference, tmp_path,
                                                                                          capsys):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(reference, out, ignore=shutil.ignore_patterns("checkpoints", "batches"))  # as results/mini
    for committed in (True, False):                          # with identity.json, and as before identities
        if not committed:
            (out / "identity.json").unlink()
        before = snapshot(out)
        code, err = main_here(capsys, "--algo", "musbo", "--env", "halfcheetah", "--budget", "250k", "--profile",
                              "smoke", "--seed", "4", "--out", str(out))
        assert code == 2 and "seed: 3 there, 4 here" in err and "refused before writing anything" in err
        assert snapshot(out) == before


def test_a_second_run_on_a_locked_directory_is_refused_naming_the_holder(tmp_path, capsys):
    from algos.config import resolve_run_config
    from algos.rundir import RunDir
    held = RunDir(tmp_path, resolve_run_config("smoke", "bremen", "halfcheetah", "250k", 3))
    try:
        proc = bremen(tmp_path, check=False)                 # another process, the same run: the lock holds
        assert proc.returncode == 2 and f"in use by another run (pid {os.getpid()}" in proc.stderr
        assert "seed: 3 there, 4 here" in refused(capsys, tmp_path, seed="4")   # seed 1 beside seed 0
    finally:
        held.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["identity.json", "run.lock"]


def test_two_runs_started_at_once_leave_one_run(tmp_path):
    cmds = [[sys.executable, "-m", "algos.run", *BREMEN, "--seed", seed, "--out", str(tmp_path)] for seed in ("0", "1")]
    procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in cmds]
    codes = [p.wait(timeout=600) for p in procs]
    assert sorted(codes) == [0, 2], [p.stderr.read() for p in procs]
    winner = codes.index(0)
    assert json.loads((tmp_path / "identity.json").read_text())["seed"] == winner
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["seed"] == winner


def test_flipped_bytes_in_a_checkpoint_are_detected_and_the_previous_one_is_used(reference, tmp_path):
    run_cli(tmp_path, kill_at="write:0")
    newest = tmp_path / "checkpoints" / "deployment_2.pt"
    data = bytearray(newest.read_bytes())
    for k in range(len(data) // 2, len(data) // 2 + 4):      # a few mantissa bytes inside the weights
        data[k] ^= 0x01
    newest.write_bytes(bytes(data))
    resumed = run_cli(tmp_path)
    assert f"checkpoint {newest} does not match its sha256" in resumed.stderr
    assert "resuming after deployment 1" in resumed.stderr
    pd.testing.assert_frame_equal(results(tmp_path)[0], results(reference)[0])


def test_a_nan_after_a_resume_names_the_checkpoint(tmp_path, monkeypatch, capsys):
    from algos.core.ensemble import DynamicsEnsemble
    assert bremen(tmp_path, seed="5", kill_at="policy:2").returncode == -9
    monkeypatch.setattr(DynamicsEnsemble, "predict_trajectory",
                        lambda self, obs0, actions, **kw: torch.full((len(obs0), actions.shape[1], obs0.shape[1]), float("nan")))
    code, err = main_here(capsys, *BREMEN, "--seed", "5", "--out", str(tmp_path))
    message = err.strip().splitlines()[-1]
    assert code == 2
    assert "phase=eval deployment=2" in message and "seed5" in message
    assert f"checkpoint {tmp_path / 'checkpoints' / 'deployment_1.pt'}" in message


@pytest.mark.parametrize("value", ["nan", "inf", "1e400", "-.inf"])
def test_non_finite_hyperparameters_are_refused(tmp_path, capsys, value):
    err = refused(capsys, tmp_path / "out", "--set", f"trpo.delta={value}")
    assert "trpo.delta=" in err and "must be a finite number" in err
    assert not (tmp_path / "out").exists()


def test_a_resume_under_another_thread_count_is_refused_unless_allowed(tmp_path):
    # torch_threads: 0 (torch's default, as the paper profile): the effective count comes from the host
    killed = bremen(tmp_path, "--set", "torch_threads=0", kill_at="policy:2", env={"OMP_NUM_THREADS": "1"})
    assert killed.returncode == -9
    proc = bremen(tmp_path, "--set", "torch_threads=0", env={"OMP_NUM_THREADS": "2"}, check=False)
    assert proc.returncode == 2 and "threads 1 then, 2 now" in proc.stderr and "--allow-different-host" in proc.stderr
    assert not (tmp_path / "metrics.csv").exists()
    bremen(tmp_path, "--set", "torch_threads=0", "--allow-different-host", env={"OMP_NUM_THREADS": "2"})
    per_deployment = json.loads((tmp_path / "provenance.json").read_text())["deployments"]
    assert [(d["deployment"], d["threads"], d["resumed_on_different_host"]) for d in per_deployment] == [
        (1, 1, False), (2, 2, True)]
    assert all({"git_commit", "git_dirty", "device", "packages"} <= set(d) for d in per_deployment)


@pytest.mark.parametrize("args, message", [
    (["--set", "trpo.delta={a: 1}"], "trpo.delta must be float (like 0.05), got the mapping {'a': 1}"),
    (["--set", "budget_samples.250k=1000000000000"], "GiB for its arrays alone"),
    (["--out", ""], "--out is empty"),
    (["--out", "  "], "--out is empty"),
    (["--track", "tensorboard"], "needs the tensorboard package"),
    (["--lock-wait", "-1"], "--lock-wait -1 must be a finite number of seconds >= 0"),
    (["--lock-wait", "inf"], "--lock-wait inf must be a finite number of seconds >= 0"),
])
def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path, monkeypatch, capsys, args, message):
    if args[0] == "--track":  # a machine without the track extra (make setup installs it)
        monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.chdir(tmp_path)
    out = args[1] if args[0] == "--out" else str(tmp_path / "out")
    extra = [] if args[0] == "--out" else args
    code, err = main_here(capsys, *BREMEN, "--seed", "0", "--out", out, *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []                    # not even in the current directory


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    assert "CUDA is not available" in refused(capsys, tmp_path / "out", "--set", "device=cuda")
    assert not (tmp_path / "out").exists()


def test_a_zero_padded_seed_is_the_same_run(tmp_path):
    bremen(tmp_path, seed="0", kill_at="write:0")
    assert json.loads((tmp_path / "identity.json").read_text())["seed"] == 0
    resumed = bremen(tmp_path, seed="00")                     # seed00 is seed 0: same identity, resumes
    assert "resuming after deployment 2" in resumed.stderr


def test_a_seed_directory_must_name_the_seed_canonically(tmp_path, capsys):
    for name, seed in (("seed00", "0"), ("seed1", "0"), ("seed01", "1")):
        assert f"ends in {name} but the run's seed is {int(seed)}; name it seed{int(seed)}" in refused(
            capsys, tmp_path / name, seed=seed)
    assert list(tmp_path.iterdir()) == []


def test_resume_keeps_scalars_and_provenance_once_per_deployment(tmp_path):
    assert bremen(tmp_path, kill_at="model:2").returncode == -9  # deployment 2 had started
    bremen(tmp_path)
    scalars = pd.read_csv(tmp_path / "scalars.csv")
    assert list(scalars.columns) == ["deployment", "phase", "step", "name", "value"]
    assert sorted(scalars["deployment"].unique()) == [1, 2]
    assert not scalars.duplicated(["deployment", "phase", "step", "name"]).any()
    per_deployment = json.loads((tmp_path / "provenance.json").read_text())["deployments"]
    assert [d["deployment"] for d in per_deployment] == [1, 2]
    assert not any(d["resumed_on_different_host"] for d in per_deployment)


# ---------------------------------------------------------------- what the workflow calls (issue 12)
def test_run_config_file_runs_the_same_run_as_the_flags(tmp_path, capsys):
    from algos.config import main as config_main
    cfg_file = tmp_path / "run.yaml"
    assert config_main(["write-run-config", "--out", str(cfg_file), "--profile", "smoke", "--algo", "bremen", "--env",
                        "halfcheetah", "--budget", "250k", "--seed", "3",
                        "--set", "trpo.delta=0.07", "bc.lr=1e-3"]) == 0
    by_flags, by_file = tmp_path / "flags", tmp_path / "file"
    assert bremen(by_flags, "--set", "trpo.delta=0.07", "--set", "bc.lr=1e-3", kill_at="collect:1").returncode == -9
    proc = subprocess.run([sys.executable, "-m", "algos.run", "--run-config", str(cfg_file), "--out", str(by_file)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MUSBO_KILL_AT": "collect:1"})
    assert proc.returncode == -9, proc.stderr
    assert (by_file / "identity.json").read_bytes() == (by_flags / "identity.json").read_bytes()
    assert (by_file / "config.yaml").read_bytes() == (by_flags / "config.yaml").read_bytes()
    cfg = yaml.safe_load(cfg_file.read_text())               # the file is validated again, completely
    cfg["trpo"]["delta"] = float("nan")
    cfg_file.write_text(yaml.safe_dump(cfg))
    code, err = main_here(capsys, "--run-config", str(cfg_file), "--out", str(tmp_path / "bad"))
    assert code == 2 and "trpo.delta=nan must be a finite number" in err
    code, err = main_here(capsys, "--run-config", str(cfg_file), "--seed", "1", "--out", str(tmp_path / "bad"))
    assert code == 2 and "--run-config replaces --seed" in err
    assert not (tmp_path / "bad").exists()


def test_replace_stale_moves_the_old_run_aside_and_starts_over(tmp_path):
    out = tmp_path / "seed3"                                  # a run directory: named seed<N>
    from algos.config import config_hash
    assert bremen(out, kill_at="policy:2").returncode == -9
    old = snapshot(out)
    old_hash = json.loads((out / "identity.json").read_text())["config_hash"]
    proc = bremen(out, "--set", "trpo.delta=0.2", "--replace-stale")
    assert "resuming" not in proc.stderr
    stale = out / f"stale-{old_hash[:12]}"
    moved = {k[len(stale.name) + 1:]: v for k, v in snapshot(out).items() if k.startswith(stale.name + "/")}
    assert moved == {k: v for k, v in old.items() if k != "run.lock"}    # nothing deleted
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["trpo"]["delta"] == 0.2
    assert json.loads((out / "identity.json").read_text())["config_hash"] == config_hash(cfg)
    assert pd.read_csv(out / "metrics.csv")["deployment"].tolist() == [1, 2]
    # the same config again: an ordinary resume (what retries and --rerun-incomplete need)
    (out / "metrics.csv").unlink()
    assert "resuming after deployment 2" in bremen(out, "--set", "trpo.delta=0.2", "--replace-stale").stderr


def test_a_full_disk_mid_run_is_one_line_naming_the_file_and_leaves_no_temp_file(tmp_path, monkeypatch, capsys):
    import errno

    import algos.rundir as rundir
    calls = []
    real_fsync = os.fsync

    def fsync(fd):  # identity.json, config.yaml, then the disk is full at B(1)
        calls.append(fd)
        if len(calls) >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)
    monkeypatch.setattr(rundir.os, "fsync", fsync)
    code, err = main_here(capsys, *BREMEN, "--seed", "0", "--out", str(tmp_path))
    assert code == 2
    assert err.strip().splitlines()[-1] == (f"error: cannot write {tmp_path / 'batches' / 'deployment_1.npz'}: "
                                           f"No space left on device; free some space or choose another --out")
    assert not list(tmp_path.rglob("*.tmp"))


def test_track_tensorboard_mirrors_the_scalars(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    code, err = main_here(capsys, *BREMEN, "--seed", "0", "--out", str(tmp_path), "--track", "tensorboard")
    assert code == 0, err
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    csv_rows = pd.read_csv(tmp_path / "scalars.csv").query("phase == 'eval' and name == 'return_mean'")
    assert [e.value for e in events.Scalars("eval/return_mean")] == pytest.approx(csv_rows["value"].tolist(), rel=1e-6)


# ---------------------------------------------------------------- issue 21: replace-stale, scalars.csv on resume
def test_replace_stale_refuses_a_results_tree_in_one_line(tmp_path, capsys):
    results = tmp_path / "RES"
    (results / "runs" / "musbo").mkdir(parents=True)
    (results / "notes.txt").write_text("mine")
    before = snapshot(results)
    err = refused(capsys, results, "--replace-stale")
    assert "--replace-stale moves aside only a run directory" in err and str(results) in err
    assert snapshot(results) == before and sorted(p.name for p in results.iterdir()) == ["notes.txt", "runs"]


@pytest.mark.parametrize("damage, kept", [
    ("2,mod", ""), ("x", ""), ("2,model,0,loss,0.5", ""),       # the last row cut by a kill (no newline)
    ("1,model,x,loss,0.5\n1,model,0,loss,0.5\n", "1,model,0,loss,0.5\n"),   # a malformed row, then a good one
])
def test_torn_last_scalars_row_is_dropped_on_resume(tmp_path, damage, kept):
    out = tmp_path / "seed3"
    assert bremen(out, kill_at="write:0").returncode == -9    # every deployment done, killed before metrics.csv
    intact = (out / "scalars.csv").read_bytes()
    (out / "scalars.csv").write_bytes(intact + damage.encode())  # a row cut by the kill, or malformed rows
    proc = bremen(out)
    assert f"{out / 'scalars.csv'}: dropped " in proc.stderr
    # the resume trains nothing: what is left is exactly the well-formed rows
    assert (out / "scalars.csv").read_bytes() == intact + kept.encode()
    assert not list(out.rglob("*.tmp"))


def test_deleted_scalars_csv_is_noted_and_rebuilt(tmp_path):
    out = tmp_path / "seed3"
    assert bremen(out, kill_at="model:2").returncode == -9    # deployment 1 done
    (out / "scalars.csv").unlink()
    proc = bremen(out)
    assert f"{out / 'scalars.csv'} is missing" in proc.stderr
    scalars = pd.read_csv(out / "scalars.csv")
    assert sorted(scalars["deployment"].unique()) == [2]      # rebuilt for the deployment redone
    assert json.loads((out / "provenance.json").read_text())["scalars_csv_lacks_deployments"] == [1]
    (out / "metrics.csv").unlink()                            # the note survives a later resume
    bremen(out)
    assert json.loads((out / "provenance.json").read_text())["scalars_csv_lacks_deployments"] == [1]


def test_an_uninterrupted_run_notes_no_missing_scalars(reference):
    assert json.loads((reference / "provenance.json").read_text())["scalars_csv_lacks_deployments"] == []


def test_full_disk_during_scalars_trim_names_the_file(tmp_path, monkeypatch, capsys):
    import errno

    import algos.rundir as rundir
    out = tmp_path / "seed0"
    assert bremen(out, seed="0", kill_at="model:2").returncode == -9
    before = (out / "scalars.csv").read_bytes()
    real_fsync = os.fsync

    def fsync(fd):  # the disk is full when the resume rewrites scalars.csv
        if ".scalars.csv." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)
    monkeypatch.setattr(rundir.os, "fsync", fsync)
    code, err = main_here(capsys, *BREMEN, "--seed", "0", "--out", str(out))
    assert code == 2
    assert err.strip().splitlines()[-1] == (f"error: cannot write {out / 'scalars.csv'}: No space left on device; "
                                           f"free some space or choose another --out")
    assert not list(out.rglob("*.tmp")) and (out / "scalars.csv").read_bytes() == before
