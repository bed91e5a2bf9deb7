"""The analysis checks every run before using it (analysis/results.py, Study.check): each
malformed run of the issue-16 table is excluded with its reason in missing_runs.md, never
plotted, and counted; a results dir of another profile is refused."""
import subprocess
import sys
from pathlib import Path

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
