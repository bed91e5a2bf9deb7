"""The run CLI end to end on the smoke profile: the output contract, resume after SIGKILL with
bit-identical results, determinism, and bad inputs rejected before any work."""
import json
import os
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
    for ours, theirs in zip(results(tmp_path), results(reference)):
        if isinstance(ours, dict):
            assert ours == theirs                             # batches bit-identical
        else:
            pd.testing.assert_frame_equal(ours, theirs)


def test_corrupted_batch_is_detected_and_redone(reference, tmp_path):
    run_cli(tmp_path, kill_at="write:0")
    batch = tmp_path / "batches" / "deployment_2.npz"
    batch.write_bytes(batch.read_bytes()[:100])               # truncated
    resumed = run_cli(tmp_path)
    assert "missing or corrupted" in resumed.stderr
    assert results(tmp_path)[3] == results(reference)[3]


def test_corrupted_checkpoint_falls_back_to_the_previous_one(reference, tmp_path):
    run_cli(tmp_path, kill_at="write:0")
    newest = max((tmp_path / "checkpoints").glob("*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    newest.write_bytes(b"garbage")
    resumed = run_cli(tmp_path)
    assert "unreadable" in resumed.stderr and "resuming after deployment 1" in resumed.stderr
    pd.testing.assert_frame_equal(results(tmp_path)[0], results(reference)[0])


def test_same_seed_same_results_on_cpu(reference, tmp_path):
    run_cli(tmp_path)
    pd.testing.assert_frame_equal(results(tmp_path)[0], results(reference)[0])


@pytest.mark.parametrize("args, message", [
    (["--algo", "sac"], "invalid choice: 'sac'"),
    (["--env", "humanoid"], "invalid choice: 'humanoid'"),
    (["--budget", "1m"], "invalid choice: '1m'"),
    (["--profile", "tiny"], "invalid choice: 'tiny'"),
    (["--seed", "x"], "invalid int value: 'x'"),
    (["--set", "trpo.detla=0.1"], "did you mean 'trpo.delta'"),
    (["--set", "trpo.iterations=-1"], "must not be negative"),
    (["--set", "dynamics.hidden=[0, 10]"], "must be positive"),
    (["--set", "musbo.uncertainty_weighting=maybe"], "must be bool"),
])
def test_bad_inputs_fail_fast_naming_the_problem(tmp_path, args, message):
    base = {"--algo": "musbo", "--env": "hopper", "--budget": "500k", "--seed": "0", "--profile": "smoke",
            "--out": str(tmp_path / "out")}
    extra = []
    if args[0] == "--set":
        extra = args
    else:
        base[args[0]] = args[1]
    cmd = [sys.executable, "-m", "algos.run", *[x for kv in base.items() for x in kv], *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "out" / "batches").exists()       # no work started


def test_unwritable_output_directory_is_named(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = run_cli(blocker / "run", check=False)
    assert proc.returncode == 2 and "is not writable" in proc.stderr and "--out" in proc.stderr


def test_a_different_config_in_the_same_directory_is_refused(reference, tmp_path):
    run_cli(tmp_path, kill_at="write:0")
    proc = run_cli(tmp_path, "--set", "trpo.delta=0.2", check=False)
    assert proc.returncode == 2 and "different configuration" in proc.stderr


def test_non_finite_values_stop_the_run_naming_phase_deployment_and_seed():
    from algos.run import PhaseTimer, RunError
    timer = PhaseTimer("[musbo hopper 500k seed7]", 0.0)
    timer.reset(2)
    with pytest.raises(RunError) as err:
        with timer("model"):
            raise FloatingPointError("non-finite loss (phase=model)")
    assert "phase=model" in str(err.value) and "deployment=2" in str(err.value) and "seed7" in str(err.value)


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
    from algos.core.model_eval import energy_distance, trajectory_mse
    from algos.run import evaluate
    from envs.collector import collect

    cfg = {**resolve_run_config("smoke", "bremen", "hopper", "250k", 0, []), "eval_episodes": 6, "max_episode_steps": 27,
           "model_eval_episodes": 6}
    torch.manual_seed(0)
    model = DynamicsEnsemble(11, 3, members=2, hidden=[16])
    data = collect("hopper", 500, None, seed=0)
    model.fit(data["obs"], data["act"], data["next_obs"], max_epochs=1, generator=torch.Generator().manual_seed(0))

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
