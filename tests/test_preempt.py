"""Jobs that outlive their time limit (issue 21): a run stopped inside a phase (SIGUSR1, SIGTERM,
--stop-after-min, or killed after a periodic --checkpoint-every-min checkpoint) saves the loop in
progress (a model fit's epoch, a behaviour cloning pass, a TRPO iteration, a SAC step) and the
rerun resumes there, bit-identical to an uninterrupted run on CPU; SIGTERM where nothing can be
saved says where it stopped; the CUDA-graph engine's fallback is recorded in provenance.json.

Each stop is sent by the run to itself at an exact point (MUSBO_SIGNAL_AT=<SIGNAL>@<point>,
algos/core/preempt.py: signal_for_test), through the real signal handlers."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from algos.core import preempt, rollouts

ROOT = Path(__file__).resolve().parent.parent
TIMING = ["collect_s", "model_s", "labeler_s", "bc_s", "policy_s", "eval_s"]
RESULT_CSVS = ("eval_returns.csv", "model_eval.csv", "novelty.csv", "scalars.csv")


def command(algo, out, *extra):
    return [sys.executable, "-m", "algos.run", "--algo", algo, "--env", "halfcheetah", "--budget", "250k",
            "--seed", "3", "--profile", "smoke", "--out", str(out), *extra]


def run(algo, out, *extra, env=None):
    environ = {**os.environ, "MUSBO_SIGNAL_AT": "", "MUSBO_KILL_AT": "", **(env or {})}
    return subprocess.run(command(algo, out, *extra), cwd=ROOT, capture_output=True, text=True, env=environ,
                          timeout=600)


_references = {}


def reference(algo, tmp_path_factory):
    """An uninterrupted smoke run of `algo` (made once per module)."""
    if algo not in _references:
        out = tmp_path_factory.mktemp(f"reference_{algo}")
        proc = run(algo, out)
        assert proc.returncode == 0, proc.stderr[-3000:]
        _references[algo] = out
    return _references[algo]


def assert_same_results(out, ref):
    """Every result file byte for byte (metrics.csv without its timings), and the batches."""
    pd.testing.assert_frame_equal(pd.read_csv(out / "metrics.csv").drop(columns=TIMING),
                                  pd.read_csv(ref / "metrics.csv").drop(columns=TIMING))
    for name in RESULT_CSVS:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    batches = sorted((ref / "batches").glob("*.npz"))
    assert batches and [p.read_bytes() for p in batches] == [(out / "batches" / p.name).read_bytes() for p in batches]


def one_line(stderr: str) -> str:
    """The last line of stderr, which must be the run's only word on the stop."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr[-3000:]
    assert sum("rerun to resume" in line for line in lines) == 1, stderr[-3000:]
    return lines[-1]


# ---------------------------------------------------------------- stops inside a phase
@pytest.mark.parametrize("algo, stop, phase, where", [
    ("bremen", "SIGUSR1@trpo:2:1", "policy", "trpo iteration 1"),
    ("mopo", "SIGTERM@sac:2:37", "policy", "sac step 37"),
    ("musbo", "SIGUSR1@labeler_fit:2:2", "labeler", "labeler_fit epoch 2"),
    ("musbo", "SIGTERM@bc:2:2", "bc", "bc pass 2"),
])
def test_a_stop_inside_a_phase_saves_it_and_the_rerun_matches_an_uninterrupted_run(tmp_path, tmp_path_factory, algo,
                                                                                    stop, phase, where):
    ref = reference(algo, tmp_path_factory)
    stopped = run(algo, tmp_path, env={"MUSBO_SIGNAL_AT": stop})
    assert stopped.returncode == preempt.EXIT_STOPPED, stopped.stderr[-3000:]
    line = one_line(stopped.stderr)
    assert line.startswith(f"stopped by {stop.split('@')[0]} at deployment 2, phase {phase}: {where} saved in ")
    assert line.endswith("checkpoints/mid_deployment_2.pt; rerun to resume")
    assert (tmp_path / "checkpoints" / "mid_deployment_2.pt.sha256").is_file()
    assert not (tmp_path / "metrics.csv").exists()
    resumed = run(algo, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming inside deployment 2 ({phase}: {where}) from" in resumed.stderr
    assert "collect" not in resumed.stderr.split("resuming inside")[1].split("deployment 2: eval")[0]
    assert_same_results(tmp_path, ref)
    assert not list((tmp_path / "checkpoints").glob("mid_*"))  # the deployment's own checkpoint replaced it
    provenance = json.loads((tmp_path / "provenance.json").read_text())["deployments"]
    assert [d["resumed_inside"] for d in provenance] == [None, f"{phase}: {where}"]


def test_sigterm_outside_training_says_where_it_stopped_and_the_rerun_matches(tmp_path, tmp_path_factory):
    ref = reference("bremen", tmp_path_factory)
    stopped = run("bremen", tmp_path, env={"MUSBO_SIGNAL_AT": "SIGTERM@collect:2"})
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert one_line(stopped.stderr) == ("stopped by SIGTERM at deployment 2, phase collect (nothing saved in this "
                                        "phase); rerun to resume")
    resumed = run("bremen", tmp_path)
    assert "resuming after deployment 1 from" in resumed.stderr
    assert_same_results(tmp_path, ref)


def test_sigusr1_outside_training_stops_after_the_deployment_checkpoint(tmp_path, tmp_path_factory):
    ref = reference("bremen", tmp_path_factory)
    stopped = run("bremen", tmp_path, env={"MUSBO_SIGNAL_AT": "SIGUSR1@eval:1"})
    assert stopped.returncode == preempt.EXIT_STOPPED, stopped.stderr[-3000:]
    assert one_line(stopped.stderr) == ("stopped by SIGUSR1 after deployment 1 (its checkpoint is written); "
                                        "rerun to resume")
    assert not list((tmp_path / "checkpoints").glob("mid_*"))
    resumed = run("bremen", tmp_path)
    assert "resuming after deployment 1 from" in resumed.stderr
    assert_same_results(tmp_path, ref)


def test_a_sigusr1_after_the_last_deployment_lets_the_run_finish(tmp_path, tmp_path_factory):
    ref = reference("bremen", tmp_path_factory)
    finished = run("bremen", tmp_path, env={"MUSBO_SIGNAL_AT": "SIGUSR1@eval:2"})
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_same_results(tmp_path, ref)


def test_periodic_checkpoints_change_nothing_and_a_kill_resumes_from_the_newest(tmp_path, tmp_path_factory):
    ref = reference("bremen", tmp_path_factory)
    killed = run("bremen", tmp_path, "--checkpoint-every-min", "1e-9", env={"MUSBO_KILL_AT": "eval:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = run("bremen", tmp_path)  # the last poll before the kill: TRPO's last iteration
    assert "resuming inside deployment 2 (policy: trpo iteration 1) from" in resumed.stderr
    assert_same_results(tmp_path, ref)


def test_stop_after_min_stops_at_the_first_poll_after_the_deadline(tmp_path, tmp_path_factory):
    ref = reference("bremen", tmp_path_factory)
    stopped = run("bremen", tmp_path, "--stop-after-min", "1e-9")
    assert stopped.returncode == preempt.EXIT_STOPPED, stopped.stderr[-3000:]
    assert one_line(stopped.stderr).startswith("stopped by --stop-after-min 1e-09 at deployment 1, phase model: "
                                               "model_fit epoch 1 saved in ")
    assert run("bremen", tmp_path).returncode == 0
    assert_same_results(tmp_path, ref)


def test_a_corrupted_mid_phase_checkpoint_is_skipped_and_its_deployment_redone(tmp_path, tmp_path_factory):
    ref = reference("bremen", tmp_path_factory)
    assert run("bremen", tmp_path, env={"MUSBO_SIGNAL_AT": "SIGUSR1@trpo:2:1"}).returncode == preempt.EXIT_STOPPED
    mid = tmp_path / "checkpoints" / "mid_deployment_2.pt"
    data = bytearray(mid.read_bytes())
    data[len(data) // 2] ^= 0xFF
    mid.write_bytes(bytes(data))
    resumed = run("bremen", tmp_path)
    assert "mid_deployment_2.pt does not match its sha256" in resumed.stderr
    assert "redoing deployment 2 from its start" in resumed.stderr
    assert "resuming after deployment 1 from" in resumed.stderr
    assert_same_results(tmp_path, ref)


def test_the_temp_file_of_a_killed_mid_phase_checkpoint_write_is_removed_at_start(tmp_path):
    from algos.rundir import remove_stale_temp_files
    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / "checkpoints" / f".mid_deployment_2.pt{end}.4242.tmp" for end in ("", ".sha256")]
    for p in stale:
        p.write_bytes(b"half")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)


@pytest.mark.parametrize("flag, value", [("--checkpoint-every-min", "-1"), ("--stop-after-min", "nan"),
                                         ("--stop-after-min", "inf")])
def test_bad_time_limits_are_one_line_errors_before_any_work(tmp_path, flag, value):
    proc = run("bremen", tmp_path / "seed3", flag, value)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {flag} {float(value):g} must be a finite number of minutes >= 0 (0: off)")
    assert not (tmp_path / "seed3").exists()


# ---------------------------------------------------------------- the session and its loops, in process
def test_a_resumed_loop_gets_its_state_generators_and_global_rng_and_skips_finished_loops():
    saved = {}
    session = preempt.Session(save=lambda record: saved.update(record) or "ckpt", where=lambda: (1, "policy"))
    gen = torch.Generator().manual_seed(0)
    with preempt.installed(session):
        session.start_deployment(1)
        preempt.loop("first", "epoch").done({"epochs": 3})
        loop = preempt.loop("second", "step", gen)
        torch.randn(3, generator=gen)
        session.requested = "SIGUSR1"
        with pytest.raises(preempt.Stopped, match="stopped by SIGUSR1 at deployment 1, phase policy: second step 5 "
                                                  "saved in ckpt; rerun to resume"):
            loop.poll(5, lambda: {"k": 5})
        expected_gen, expected_rng = torch.randn(4, generator=gen), torch.randn(4)

        torch.manual_seed(123)
        restored = []
        session.requested = None
        session.start_deployment(1, resume=saved, restore=lambda: restored.append(True))
        fresh = torch.Generator().manual_seed(99)
        first = preempt.loop("first", "epoch")
        second = preempt.loop("second", "step", fresh)
        third = preempt.loop("third", "step")
    assert first.finished and first.result == {"epochs": 3} and first.saved is None
    assert not second.finished and second.saved == {"k": 5} and restored == [True]
    assert torch.equal(torch.randn(4, generator=fresh), expected_gen) and torch.equal(torch.randn(4), expected_rng)
    assert not third.finished and third.saved is None


def test_a_mid_phase_checkpoint_of_other_code_is_refused_naming_the_fix():
    saved = {"index": 1, "name": "trpo", "results": [("model_fit", {})], "state": {}, "generators": [],
             "rng": torch.get_rng_state()}
    session = preempt.Session()
    with preempt.installed(session):
        session.start_deployment(2, resume=saved)
        with pytest.raises(preempt.ResumeError, match="its loop 0 is model_fit, here it is bc.*delete "
                                                      "checkpoints/mid_deployment_2.pt"):
            preempt.loop("bc", "pass")


def test_a_resumed_loop_runs_its_first_step_before_it_can_stop_again():
    """Progress in every job: a job whose deadline passed before its first poll still runs the
    step it resumed at (else each retry would stop where it started)."""
    session = preempt.Session(save=lambda record: "ckpt", where=lambda: (2, "policy"), stop_after_min=1e-9)
    saved = {"index": 0, "name": "sac", "unit": "step", "step": 4, "state": {}, "generators": [],
             "rng": torch.get_rng_state(), "results": []}
    with preempt.installed(session):
        session.start_deployment(2, resume=saved)
        loop = preempt.loop("sac", "step")
        loop.poll(4, dict)
        with pytest.raises(preempt.Stopped, match="stopped by --stop-after-min 1e-09 at deployment 2, phase policy: "
                                                  "sac step 5 saved in ckpt"):
            loop.poll(5, dict)


def test_without_a_session_a_loop_never_stops():
    loop = preempt.loop("trpo", "iteration")
    assert not loop.finished and loop.saved is None
    loop.poll(0, lambda: pytest.fail("no session: nothing to save"))
    assert loop.done(7) == 7


# ---------------------------------------------------------------- the CUDA-graph engine's fallback, recorded
def test_the_cuda_graph_fallback_is_recorded_in_provenance_and_changes_no_number(tmp_path, tmp_path_factory,
                                                                                  monkeypatch, capsys):
    """On CPU, with the capture replaced by one whose replay records nothing (the check fails):
    the run falls back to eager with one line, records it per deployment, and its numbers are
    the eager run's."""
    ref = reference("bremen", tmp_path_factory)
    monkeypatch.setattr(rollouts, "resolve_engine", lambda engine, device, *_: engine)
    monkeypatch.setattr(rollouts, "GRAPH", {"capture": lambda advance: (advance(), lambda: None)[1],
                                            "checked": False, "fallback": None})
    import algos.run as run_module
    code = run_module.main(command("bremen", tmp_path, "--set", "trpo.rollout_engine=cuda_graph")[3:])
    err = capsys.readouterr().err
    assert code == 0, err
    fallback = [line for line in err.splitlines() if line.startswith("rollout engine cuda_graph:")]
    assert fallback == ["rollout engine cuda_graph: a captured step differs from eager beyond rounding (state obs: "
                        f"max |difference| {fallback[0].split('max |difference| ')[1].split(')')[0]}); falling back to "
                        "eager for the rest of this run (recorded in provenance.json)"]
    provenance = json.loads((tmp_path / "provenance.json").read_text())["deployments"]
    assert [d["rollout_engine_fallback"] for d in provenance] == [rollouts.engine_fallback()] * 2
    assert [d["rollout_engine"] for d in provenance] == ["cuda_graph"] * 2
    assert rollouts.engine_fallback().startswith("a captured step differs from eager beyond rounding")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "metrics.csv").drop(columns=TIMING),
                                  pd.read_csv(ref / "metrics.csv").drop(columns=TIMING))
    assert (tmp_path / "scalars.csv").read_bytes() == (ref / "scalars.csv").read_bytes()


# ---------------------------------------------------------------- the workflow: a run longer than a job may be
@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    from test_workflow import fresh_clone
    return fresh_clone(tmp_path_factory.mktemp("clone") / "repo")


def dry_run(clone, *config):
    from test_workflow import snakemake
    proc = snakemake("--dry-run", "--forceall", "--cores=8", "results/paper/runs/musbo/hopper/500k/seed0/metrics.csv",
                     "--config", *config, cwd=clone)
    assert proc.returncode == 0, proc.log
    resources = re.search(r"^\s+resources: (.*)$", proc.log, re.M).group(1).split(", ")
    return set(resources), proc.log


def test_a_capped_training_job_asks_for_the_cap_and_stops_itself_before_it(clone):
    resources, log = dry_run(clone, "resources={max_runtime_min: 240, checkpoint_every_min: 30}")
    assert {"runtime=240", "stop_after_min=230", "checkpoint_every_min=30"} <= resources, resources
    assert "exec python -m algos.run" in log and "--stop-after-min 230 --checkpoint-every-min 30 >" in log
    resources, log = dry_run(clone, "seeds=[0]")  # no cap: the env's runtime, no stop of its own
    assert {"runtime=1800", "stop_after_min=0", "checkpoint_every_min=0"} <= resources, resources


def test_a_stop_margin_that_leaves_no_time_is_refused_naming_the_key(clone):
    from test_workflow import snakemake
    proc = snakemake("--dry-run", "--cores=8", "--config", "resources={max_runtime_min: 240, stop_margin_min: 240}",
                     cwd=clone)
    assert proc.returncode != 0
    assert "config: resources.stop_margin_min=240 must be above 0 and below every training job's runtime" in proc.log


@pytest.mark.slow
def test_a_run_longer_than_its_job_limit_goes_through_several_jobs_and_matches(clone, tmp_path):
    """The smoke run under a 1-minute cap whose jobs stop themselves after 0.6 s: Snakemake's
    retries (retries: 0 in the config, the ones the cap needs added) carry it to the end through
    several jobs, each resuming where the last stopped, with an uninterrupted run's results."""
    from test_workflow import snakemake
    run_dir = "results/smoke/runs/bremen/halfcheetah/250k/seed0"
    proc = snakemake(f"{run_dir}/metrics.csv", "--cores", "1", "--configfile=config/smoke.yaml", "--config",
                     "resources={max_runtime_min: 1, stop_margin_min: 0.99, retries: 0}", cwd=clone, timeout=900)
    assert proc.returncode == 0, proc.log[-5000:]
    assert proc.log.count("Trying to restart job") >= 1, proc.log[-5000:]
    assert "resuming" in (clone / f"logs/smoke/runs/bremen/halfcheetah/250k/seed0.log").read_text()
    ref = tmp_path / "seed0"
    done = subprocess.run([sys.executable, "-m", "algos.run", "--run-config", str(clone / f"{run_dir}.run_config.yaml"),
                           "--out", str(ref)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_results(clone / run_dir, ref)
