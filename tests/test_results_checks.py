"""The analysis checks every run before using it (analysis/results.py, Study.check): each
malformed run of the issue-16 table is excluded with its reason in missing_runs.md, never
plotted, and counted; a results dir of another profile is refused."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis.profile import load_profile
from analysis.results import NoResultsError, RunKey, Study
from analysis.synthetic import write_run

REPO = Path(__file__).resolve().parent.parent
KEY = RunKey("runs", "musbo", "hopper", "500k", 0)


@pytest.fixture(scope="module")
def smoke():
    return load_profile("smoke")


@pytest.fixture
def one_run(tmp_path, smoke):
    """A results dir with one good smoke run (Hopper: 3 deployments)."""
    write_run(tmp_path, KEY, smoke, with_batches=False)
    return tmp_path


def edit_metrics(root, change):
    f = KEY.path(root) / "metrics.csv"
    m = pd.read_csv(f)
    change(m).to_csv(f, index=False) if not isinstance(change, bytes) else f.write_bytes(change)


def test_a_good_run_is_used(one_run, smoke):
    study = Study(smoke, one_run)
    assert study.exists(KEY) and study.excluded == {} and study.exclusion_note() == ""
    assert study.metrics.deployment.tolist() == [1, 2, 3]


@pytest.mark.parametrize("change, reason", [
    (lambda m: m.rename(columns={"eval_return_mean": "return_mean"}), "lacks the column(s) eval_return_mean"),
    (lambda m: pd.concat([m, m.iloc[[1]]]), "deployments are [1, 2, 3, 2], not 1..3 exactly once (repeated: [2])"),
    (lambda m: m.assign(eval_return_mean=[1.0, float("nan"), 2.0]), "column eval_return_mean holds a non-finite"),
    (lambda m: pd.concat([m, m.iloc[[-1]].assign(deployment=9)]), "deployments are [1, 2, 3, 9], not 1..3"),
    (lambda m: m.iloc[:2], "deployments are [1, 2], not 1..3"),
    (lambda m: m.assign(eval_return_mean=["a", "b", "c"]), "column eval_return_mean is not numeric"),
    (b"", "metrics.csv is unreadable (EmptyDataError"),
    (bytes(range(256)) * 4, "metrics.csv is unreadable"),
])
def test_each_malformed_metrics_csv_is_excluded_with_its_reason(one_run, smoke, change, reason):
    edit_metrics(one_run, change)
    study = Study(smoke, one_run)
    assert not study.exists(KEY) and reason in study.excluded[KEY]
    assert study.metrics.empty                                # never plotted
    report = study.missing_report()
    n = len(study.main_keys())
    assert f"- `{KEY}`: {study.excluded[KEY]}" in report and f"0 of {n} runs present, {n} missing" in report
    assert study.exclusion_note([KEY]) == "1 run excluded by the input checks"


def test_a_run_of_another_profile_is_excluded_and_alone_refused(one_run, smoke):
    cfg = yaml.safe_load((KEY.path(one_run) / "config.yaml").read_text())
    (KEY.path(one_run) / "config.yaml").write_text(yaml.safe_dump({**cfg, "profile": "mini"}))
    study = Study(smoke, one_run)
    assert study.excluded == {KEY: "its config.yaml is profile 'mini', not 'smoke'"}
    with pytest.raises(NoResultsError, match="fail the input checks, e.g. runs/musbo/hopper/500k/seed0: its config"):
        study.require_runs()


def test_a_run_in_the_wrong_directory_is_excluded(one_run, smoke):
    cfg = yaml.safe_load((KEY.path(one_run) / "config.yaml").read_text())
    (KEY.path(one_run) / "config.yaml").write_text(yaml.safe_dump({**cfg, "seed": 1}))
    assert Study(smoke, one_run).excluded == {KEY: "its config.yaml is another run (seed=1)"}


def test_mini_results_under_the_smoke_profile_are_refused():
    """The committed mini runs are not smoke runs: `python -m analysis fig2 --profile smoke
    --results results/mini` draws nothing labelled smoke."""
    mini_runs = REPO / "results" / "mini" / "runs"
    if not any(mini_runs.glob("*/*/*/seed*/metrics.csv")):
        pytest.skip("no committed mini runs")
    proc = subprocess.run([sys.executable, "-m", "analysis", "fig2", "--profile", "smoke", "--results",
                           str(REPO / "results" / "mini"), "--out", "/nonexistent-never-written"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "not 'smoke'" in proc.stderr, proc.stderr


def test_the_figure_footnote_counts_the_excluded_runs(one_run, smoke, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from analysis import figures
    edit_metrics(one_run, lambda m: pd.concat([m, m.iloc[[1]]]))   # a duplicated row
    texts = []
    real_text = Figure.text
    monkeypatch.setattr(Figure, "text", lambda self, x, y, s, *a, **k: (texts.append(s), real_text(self, x, y, s, *a, **k))[1])
    figures.return_curves(Study(smoke, one_run), tmp_path / "out", "fig2")
    footnote = [t for t in texts if t.startswith("Missing:")]
    assert footnote and "(1 run excluded by the input checks) (see missing_runs.md)" in footnote[0]


def test_only_canonical_seed_directories_are_runs():
    from analysis.results import _seed_of
    assert [_seed_of(n) for n in ("seed0", "seed12", "seed00", "seed01", "seedx", "0")] == [0, 12, None, None, None, None]


# ---- issue 21: the analysis checks what it plots ----
def rewrite(root, name, change):
    f = KEY.path(root) / name
    change(pd.read_csv(f)).to_csv(f, index=False)


def test_run_made_with_other_hyperparameters_is_excluded_naming_the_keys(one_run, smoke):
    """A run made with `--set trpo.delta=0.5 eval_episodes=7`, placed in the grid (its config.yaml
    and identity.json as the run writes them)."""
    from algos.config import resolve_run_config
    from algos.rundir import identity_of
    from analysis.results import cell_config
    other = resolve_run_config("smoke", "musbo", "hopper", "500k", 0, ["trpo.delta=0.5", "eval_episodes=7"])
    (KEY.path(one_run) / "config.yaml").write_text(yaml.safe_dump(other))
    (KEY.path(one_run) / "identity.json").write_text(json.dumps(identity_of(other)))
    profile = cell_config(smoke, KEY)
    study = Study(smoke, one_run)
    why = study.excluded[KEY]
    assert why.startswith(f"made with another config than the profile's for this run (config hash "
                          f"{identity_of(other)['config_hash'][:12]}, the profile's {identity_of(profile)['config_hash'][:12]})")
    assert why.endswith(f": eval_episodes: 7 in the run, {profile['eval_episodes']} in the profile; "
                        f"trpo.delta: 0.5 in the run, {profile['trpo']['delta']} in the profile")
    assert f"- `{KEY}`: {why}" in study.missing_report() and study.metrics.empty


def test_a_key_the_run_lacks_is_named(one_run, smoke):
    """A run of older code, without a key the profile has now."""
    from algos.config import config_hash
    from analysis.results import cell_config
    cfg = yaml.safe_load((KEY.path(one_run) / "config.yaml").read_text())
    del cfg["trpo"]["delta"]
    (KEY.path(one_run) / "config.yaml").write_text(yaml.safe_dump(cfg))
    identity = json.loads((KEY.path(one_run) / "identity.json").read_text())
    (KEY.path(one_run) / "identity.json").write_text(json.dumps({**identity, "config_hash": config_hash(cfg)}))
    delta = cell_config(smoke, KEY)["trpo"]["delta"]
    assert Study(smoke, one_run).excluded[KEY].endswith(f": trpo.delta: absent in the run, {delta} in the profile")


def test_a_missing_or_edited_identity_json_excludes_the_run(one_run, smoke):
    path = KEY.path(one_run) / "identity.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "config_hash": "0" * 64}))
    why = Study(smoke, one_run).excluded[KEY]
    assert "(config hash 000000000000, the profile's" in why
    assert why.endswith("its identity.json differs, its config.yaml does not")
    path.unlink()
    assert Study(smoke, one_run).excluded == {KEY: "identity.json is missing or unreadable (FileNotFoundError)"}


def test_nan_in_eval_returns_excludes_the_run(one_run, smoke):
    rewrite(one_run, "eval_returns.csv", lambda e: e.assign(**{"return": e["return"].where(e.index != 4, np.nan)}))
    study = Study(smoke, one_run)
    assert study.excluded == {KEY: "eval_returns.csv column return holds a non-finite value"}
    assert study.random_returns.empty and study.metrics.empty


def test_an_absurd_return_excludes_the_run_and_stays_out_of_the_random_baseline(one_run, smoke):
    """1e9 as a random-policy return (deployment 0) made Hopper's baseline 8.3e7."""
    from analysis.results import RETURN_BOUND
    rewrite(one_run, "eval_returns.csv", lambda e: e.assign(**{"return": e["return"].where(e.index != 0, 1e9)}))
    study = Study(smoke, one_run)
    assert study.excluded == {KEY: f"eval_returns.csv column return holds 1e+09, outside its plausible range "
                                   f"[{-RETURN_BOUND:g}, {RETURN_BOUND:g}]"}
    assert study.random_returns.empty


def test_nan_in_model_eval_excludes_the_run(one_run, smoke):
    """It silently left its Fig. 6 cell with n = 0."""
    rewrite(one_run, "model_eval.csv", lambda m: m.assign(trajectory_mse=[0.5, np.nan, 0.2]))
    assert Study(smoke, one_run).excluded == {KEY: "model_eval.csv column trajectory_mse holds a non-finite value"}


@pytest.mark.parametrize("name, change, reason", [
    ("eval_returns.csv", lambda e: e[e.index != 3], "eval_returns.csv does not hold eval_episodes=2 episodes for "
                                                    "each of deployments 0..3 (per deployment: {0: 2, 1: 1, 2: 2, 3: 2})"),
    ("eval_returns.csv", lambda e: e[e.deployment != 0], "does not hold eval_episodes=2 episodes for each of "
                                                         "deployments 0..3 (per deployment: {1: 2, 2: 2, 3: 2})"),
    ("eval_returns.csv", lambda e: e.drop(columns="return"), "eval_returns.csv lacks the column(s) return"),
    ("metrics.csv", lambda m: m.assign(eval_episodes=7), "metrics.csv eval_episodes is [7, 7, 7], not the config's 2"),
    ("metrics.csv", lambda m: m.assign(eval_return_mean=[1.0, -2e5, 3.0]), "metrics.csv column eval_return_mean holds "
                                                                           "-200000, outside its plausible range"),
    ("model_eval.csv", lambda m: m.assign(energy_distance=-1.0), "model_eval.csv column energy_distance holds -1"),
    ("model_eval.csv", lambda m: m.iloc[:2], "model_eval.csv deployments are [1, 2], not 1..3 exactly once"),
    ("novelty.csv", lambda n: n.assign(cosine_similarity=1.5), "novelty.csv column cosine_similarity holds 1.5"),
    ("novelty.csv", lambda n: n.assign(nn_cosine_similarity=np.nan), "novelty.csv column nn_cosine_similarity holds a "
                                                                       "non-finite value"),
    ("novelty.csv", lambda n: n.assign(deployment=1), "novelty.csv deployments are [1, 1], not 2..3 exactly once"),
], ids=["episode_missing", "no_random_policy", "no_return_column", "other_eval_episodes", "absurd_mean_return",
        "negative_distance", "model_eval_deployment_missing", "cosine_above_1", "nan_cosine", "novelty_deployments"])
def test_each_malformed_result_file_excludes_its_run_with_the_reason(one_run, smoke, name, change, reason):
    if name == "novelty.csv":  # the fake run has none: write the run's own
        pd.DataFrame({"deployment": [2, 3], "cosine_similarity": [0.9, 0.8], "nn_cosine_similarity": [0.99, 0.98]}
                     ).to_csv(KEY.path(one_run) / name, index=False)
        assert Study(smoke, one_run).excluded == {}
    rewrite(one_run, name, change)
    study = Study(smoke, one_run)
    assert reason in study.excluded[KEY] and not study.exists(KEY)


@pytest.mark.parametrize("name", ["eval_returns.csv", "model_eval.csv", "novelty.csv"])
def test_a_zero_byte_result_file_excludes_its_run(one_run, smoke, name):
    (KEY.path(one_run) / name).write_bytes(b"")
    assert Study(smoke, one_run).excluded == {KEY: f"{name} is unreadable (EmptyDataError: No columns to parse from file)"}


# ---- issue 21: each of these crashed a target; now the run is excluded (or its batches skipped) ----
@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory, smoke):
    from analysis.synthetic import write_fake_results
    root = tmp_path_factory.mktemp("smoke_results") / "smoke"
    write_fake_results(root, smoke)
    return root


@pytest.fixture
def results_copy(smoke_results, tmp_path):
    import shutil
    return Path(shutil.copytree(smoke_results, tmp_path / "smoke"))


def target_excludes(target, smoke, results, key, reason):
    from analysis import targets
    paths = targets.run(target, "smoke", results, results.parent / "out", cfg=smoke)
    assert f"- `{key}`: {reason}" in (results.parent / "out" / "missing_runs.md").read_text()
    return paths


def test_zero_byte_eval_returns_does_not_crash_aggregate(smoke, results_copy):
    key = RunKey("runs", "musbo", "hopper", "500k", 0)
    (key.path(results_copy) / "eval_returns.csv").write_bytes(b"")
    target_excludes("aggregate", smoke, results_copy, key, "eval_returns.csv is unreadable (EmptyDataError")


def test_zero_byte_model_eval_does_not_crash_fig6(smoke, results_copy):
    key = RunKey("runs", "musbo", smoke["model_eval_env"], "500k", 0)
    (key.path(results_copy) / "model_eval.csv").write_bytes(b"")
    target_excludes("fig6", smoke, results_copy, key, "model_eval.csv is unreadable (EmptyDataError")


def test_zero_byte_novelty_does_not_crash_table1(smoke, results_copy):
    key = RunKey("runs", "bremen", smoke["novelty_env"], "500k", 0)
    (key.path(results_copy) / "novelty.csv").write_bytes(b"")
    target_excludes("table1", smoke, results_copy, key, "novelty.csv is unreadable (EmptyDataError")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_garbage_npz_does_not_crash_table1(smoke, results_copy, damage):
    """The batch is skipped and named; the run's novelty.csv (the same numbers) stands in."""
    from analysis import metrics
    key = RunKey("runs", "bremen", smoke["novelty_env"], "500k", 0)
    study = Study(smoke, results_copy)
    pd.DataFrame(metrics.novelty_rows(study.batch_obs(key))).to_csv(key.path(results_copy) / "novelty.csv", index=False)
    batch = key.path(results_copy) / "batches" / "deployment_2.npz"
    batch.write_bytes(batch.read_bytes()[:100] if damage == "truncated" else bytes(range(256)) * 4)
    from analysis import targets
    targets.run("table1", "smoke", results_copy, results_copy.parent / "out", cfg=smoke)
    table = (results_copy.parent / "out" / "table1_novelty.md").read_text()
    assert f"`{key}`: runs/bremen/{key.env}/500k/seed0/batches/deployment_2.npz is unreadable" in table
    shown = pd.read_csv(results_copy.parent / "out" / "table1_novelty.csv")
    assert (shown.loc[shown.env == key.env, "bremen_all_pairs_n_seeds"] == 1).all()   # from its novelty.csv


# ---- issue 21: the analysis CLI's bad arguments are one line, exit 2, before any file is written ----
def cli_refusal(capsys, *args) -> str:
    from analysis.__main__ import main
    assert main(["fig2", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and len(err) < 400, err
    return err


def test_analysis_cli_missing_config_is_one_line(capsys, smoke_results, tmp_path):
    err = cli_refusal(capsys, "--profile", "smoke", "--config", str(tmp_path / "nope.yaml"), "--results",
                      str(smoke_results), "--out", str(tmp_path / "out"))
    assert f"--config {tmp_path / 'nope.yaml'} cannot be read (No such file or directory)" in err
    assert not (tmp_path / "out").exists()


def test_analysis_cli_config_with_a_duplicate_key_is_one_line(capsys, smoke_results, tmp_path):
    (tmp_path / "merged.yaml").write_text("profile: smoke\nprofile: smoke\n")
    err = cli_refusal(capsys, "--profile", "smoke", "--config", str(tmp_path / "merged.yaml"), "--results",
                      str(smoke_results), "--out", str(tmp_path / "out"))
    assert "merged.yaml is not valid YAML at line 2: key 'profile' is given twice" in err
    assert not (tmp_path / "out").exists()


def test_analysis_cli_unknown_profile_is_one_line(capsys, smoke_results, tmp_path):
    err = cli_refusal(capsys, "--profile", "nope", "--results", str(smoke_results), "--out", str(tmp_path / "out"))
    assert "unknown profile 'nope'" in err and not (tmp_path / "out").exists()


def test_analysis_cli_out_being_a_file_is_one_line(capsys, smoke_results, tmp_path):
    (tmp_path / "a_file").write_text("")
    for out in (tmp_path / "a_file", tmp_path / "a_file" / "figures"):
        err = cli_refusal(capsys, "--profile", "smoke", "--results", str(smoke_results), "--out", str(out))
        assert f"--out {out}: {tmp_path / 'a_file'} is a file, not a directory" in err
    assert (tmp_path / "a_file").read_text() == ""


def test_analysis_cli_read_only_out_is_one_line(capsys, smoke_results, tmp_path, monkeypatch):
    import os

    from analysis import __main__ as cli
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.access(read_only, os.W_OK):  # root may write anyway: answer as a read-only mount does
        monkeypatch.setattr(cli.os, "access", lambda path, mode: Path(path) != read_only)
    err = cli_refusal(capsys, "--profile", "smoke", "--results", str(smoke_results), "--out", str(read_only / "out"))
    assert f"--out {read_only / 'out'}: {read_only} is not writable (read-only)" in err
    assert list(read_only.iterdir()) == []


def test_analysis_cli_a_folder_that_cannot_be_made_is_one_line(capsys, smoke_results, tmp_path, monkeypatch):
    import errno

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))
    monkeypatch.setattr(Path, "mkdir", refuse)
    err = cli_refusal(capsys, "--profile", "smoke", "--results", str(smoke_results), "--out", str(tmp_path / "out"))
    assert f"{tmp_path / 'out'}: Permission denied; check the path and its permissions" in err
