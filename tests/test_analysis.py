"""`python -m analysis TARGET` on fake run directories (analysis/synthetic.py): every target
writes its files, missing runs are named, Tables 1 and 2 hold what the batches and the
config say, and a missing results dir is a clear error."""
import copy
import errno
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import algos.config
from analysis import __main__ as cli
from analysis import figures, metrics, targets
from analysis.profile import load_profile
from analysis.results import RunKey, Study
from analysis.synthetic import write_fake_results

REPO = Path(__file__).resolve().parent.parent
# the files of each target that the workflow declares (rules/common.smk, ANALYSIS_OUTPUTS)
DECLARED = {
    **{f: [f"{f}.pdf"] for f in ("fig2", "fig3", "fig4", "fig5", "fig6", "aggregate", "ablation")},
    "table1": [f"table1_novelty.{e}" for e in ("csv", "md", "tex")],
    "table2": [f"table2_hyperparameters.{e}" for e in ("csv", "md", "tex")],
    "claims": ["claims.md"],
    "report": ["report.md"],
}
MISSING = [RunKey("runs", "bremen", "walker2d", "500k", 0), RunKey("runs", "mopo", "hopper", "500k", 1),
           RunKey("ablations", "no_exploration_noise", "halfcheetah", "500k", 1)]


@pytest.fixture(scope="module")
def mini():
    return load_profile("mini")


@pytest.fixture(scope="module")
def results(tmp_path_factory, mini):
    root = tmp_path_factory.mktemp("results") / "mini"
    write_fake_results(root, mini, skip=MISSING)
    return root


@pytest.fixture(scope="module")
def made_all(tmp_path_factory, results):
    out = tmp_path_factory.mktemp("paper_figures")
    paths = targets.run("all", "mini", results, out)
    return out, paths


def test_all_writes_every_declared_file_pdf_and_png(made_all):
    out, paths = made_all
    for target, files in DECLARED.items():
        for f in files:
            assert (out / f).is_file(), f"{target}: {f} missing"
            if f.endswith(".pdf"):
                assert (out / "png" / f.replace(".pdf", ".png")).stat().st_size > 10_000
                assert (out / f).read_bytes().startswith(b"%PDF")
    assert (out / "missing_runs.md").is_file() and (out / "claims.csv").is_file()
    assert all(p.exists() for p in paths)
    assert not list(out.rglob("*.tmp")), "atomic writes left temporary files"


@pytest.mark.parametrize("target", sorted(DECLARED))
def test_each_target_alone_writes_its_files(target, results, tmp_path):
    paths = targets.run(target, "mini", results, tmp_path)
    for f in DECLARED[target]:
        assert tmp_path / f in paths and (tmp_path / f).is_file()


def test_target_functions_and_cli_entry_point(results, tmp_path):
    assert targets.table2.__name__ == "table2"
    assert targets.fig6("mini", results, tmp_path / "a") == [tmp_path / "a" / "missing_runs.md", *[
        tmp_path / "a" / f for f in ("fig6.pdf", "png/fig6.png", "data/fig6.csv")]]
    done = subprocess.run([sys.executable, "-m", "analysis", "table2", "--profile", "mini", "--results",
                           str(results), "--out", str(tmp_path / "b")], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "b" / "table2_hyperparameters.tex").is_file()


def test_missing_runs_are_listed_and_figures_use_what_exists(made_all):
    out, _ = made_all
    listed = (out / "missing_runs.md").read_text()
    for k in MISSING:
        assert f"`{k}`" in listed
    assert "58 of 60 runs present, 2 missing" in listed and "5 of 6 runs present" in listed
    fig2 = pd.read_csv(out / "data" / "fig2.csv")
    walker_bremen = fig2[(fig2.env == "walker2d") & (fig2.name == "bremen")]
    assert (walker_bremen.n == 1).all() and walker_bremen.low.isna().all()  # one seed left: no CI
    assert (fig2[fig2.name == "musbo"].n == 2).all()


def test_claims_name_profile_seeds_and_warn_that_mini_is_not_the_paper(made_all):
    out, _ = made_all
    text = (out / "claims.md").read_text()
    assert "profile `mini`" in text and "seeds 0, 1" in text and "NOT the paper's numbers" in text
    assert "LESS novelty" in text
    claims = pd.read_csv(out / "claims.csv").set_index("id")
    assert claims.loc["C11", "verdict"].startswith("does not hold")  # the paper's own Table 1
    assert claims.loc["C8", "verdict"].startswith("not testable")  # mini has 5 deployments on Hopper
    assert claims.loc["C1", "verdict"].startswith("inconclusive")  # a BREMEN seed is missing
    # fake data: MUSBO best everywhere, lower similarity and model error than BREMEN
    for cid in ("C4a", "C12", "C13", "C15-500k"):
        assert claims.loc[cid, "verdict"] == "holds", cid


def test_claim_verdicts_follow_the_cis():
    from analysis.claims import compare, verdict
    hi, lo, mid = metrics.Interval(10, 9, 11), metrics.Interval(5, 4, 6), metrics.Interval(8, 5, 10)
    assert compare(hi, lo) == "above" and compare(lo, hi) == "below" and compare(hi, mid) == "overlap"
    assert compare(hi, metrics.Interval(5, np.nan, np.nan)) is None
    assert verdict(["above", "above"], "above", 5) == "holds"
    assert verdict(["above", "below"], "above", 5) == "does not hold"
    assert verdict(["above", "overlap"], "above", 5) == "inconclusive at 5 seeds"
    assert verdict([], "above", 5).startswith("not tested")


def test_report_links_every_output_and_names_provenance(made_all):
    out, _ = made_all
    report = (out / "report.md").read_text()
    for f in ("png/fig2.png", "fig6.pdf", "aggregate.pdf", "ablation.pdf", "claims.md", "missing_runs.md",
              "table1_novelty.tex", "table2_hyperparameters.csv"):
        assert f"({f})" in report, f
    assert "`fake000` (63 runs)" in report and "63 of 66 planned present" in report
    assert "\nSummary of the verdicts: " in report and "\nSummary of the learning check: " in report


def test_table1_equals_the_cosine_similarity_of_the_saved_batches(made_all, results, mini):
    out, _ = made_all
    t1 = pd.read_csv(out / "table1_novelty.csv")
    t1 = t1[t1.env == "cheetah-run"].set_index("deployment")
    study = Study(mini, results)
    per_seed = {s: metrics.cosine_novelty_per_deployment(study.batch_obs(RunKey("runs", "musbo", "cheetah-run",
                                                                                  "500k", s))) for s in (0, 1)}
    for dep in range(2, 6):
        obs = [np.load(results / f"runs/musbo/cheetah-run/500k/seed0/batches/deployment_{i}.npz")["obs"]
               for i in range(1, dep + 1)]
        assert per_seed[0][dep - 2] == pytest.approx(metrics.cosine_novelty(obs[-1], np.concatenate(obs[:-1])))
        assert t1.loc[dep, "musbo_all_pairs_mean"] == pytest.approx(np.mean([per_seed[s][dep - 2] for s in (0, 1)]))
    assert t1.loc[2, "musbo_paper"] == 0.994 and t1.loc[5, "bremen_paper"] == 0.865
    assert "Higher similarity means LESS novelty" in (out / "table1_novelty.md").read_text()


def test_table2_values_are_the_config_values(made_all, mini):
    out, _ = made_all
    paper = load_profile("paper")
    t2 = pd.read_csv(out / "table2_hyperparameters.csv", keep_default_na=False)
    ours = t2[t2.source == "config (paper)"].set_index("config_key")
    assert ours.loc["trpo.iterations", "hopper"] == str(paper["run"]["envs"]["hopper"]["trpo"]["iterations"])
    assert ours.loc["trpo.delta", "halfcheetah"] == str(paper["run"]["envs"]["halfcheetah"]["trpo"]["delta"])
    assert ours.loc["musbo.alpha", "ant"] == str(paper["run"]["defaults"]["musbo"]["alpha"])
    assert set(ours.matches_paper) <= {"yes", ""}  # paper.yaml matches every value the paper states
    profile = pd.read_csv(out / "table2_hyperparameters_profile.csv", keep_default_na=False)
    mini_l = profile[(profile.source == "config (mini)") & (profile.config_key == "trpo.iterations")]
    assert mini_l.walker2d.item() == str(mini["run"]["envs"]["walker2d"]["trpo"]["iterations"])
    assert mini_l.matches_paper.item() == "NO"


def test_table2_follows_an_edited_config(tmp_path, monkeypatch):
    config_dir = tmp_path / "config"
    shutil.copytree(REPO / "config", config_dir)
    paper = yaml.safe_load((config_dir / "paper.yaml").read_text())
    paper["run"]["envs"]["hopper"]["trpo"]["iterations"] = 6001
    paper["run"]["defaults"]["musbo"]["alpha"] = 0.5
    (config_dir / "paper.yaml").write_text(yaml.safe_dump(paper))
    monkeypatch.setattr(algos.config, "CONFIG_DIR", config_dir)
    targets.run("table2", "paper", tmp_path / "no_results_needed", tmp_path / "out")
    t2 = pd.read_csv(tmp_path / "out" / "table2_hyperparameters.csv", keep_default_na=False)
    ours = t2[t2.source == "config (paper)"].set_index("config_key")
    assert ours.loc["trpo.iterations", "hopper"] == "6001" and ours.loc["trpo.iterations", "matches_paper"] == "NO"
    assert ours.loc["musbo.alpha", "walker2d"] == "0.5"
    # BREMEN's own delta on Cheetah-Run (run.envs.cheetah-run.per_algo) is not Table 2's: MUSBO's 0.05 shows
    assert paper["run"]["envs"]["cheetah-run"]["per_algo"]["bremen"]["trpo"]["delta"] == 0.1
    assert ours.loc["trpo.delta", "cheetah-run"] == "0.05" and ours.loc["trpo.delta", "matches_paper"] == "yes"
    assert "6001" in (tmp_path / "out" / "table2_hyperparameters.tex").read_text()


def test_missing_results_dir_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["fig2", "--profile", "mini", "--results", str(tmp_path / "nothing"), "--out",
                     str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nothing") in err and "does not exist" in err
    assert "snakemake --cores 8 all --configfile config/mini.yaml" in err
    assert "python -m algos.run --profile mini" in err
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="holds no completed run"):
        targets.run("report", "mini", tmp_path / "empty", tmp_path / "out")


def test_a_full_disk_is_one_line_and_leaves_no_half_written_output(results, tmp_path, monkeypatch, capsys):
    # the analysis writes through the run directory's one atomic writer
    from algos import rundir

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(rundir.os, "fsync", full)
    out = tmp_path / "out"
    assert cli.main(["table2", "--profile", "mini", "--results", str(results), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device; free some space" in err[0], err
    assert not [p for p in out.rglob("*") if p.is_file()]


def test_a_figure_without_any_of_its_runs_still_renders(tmp_path, mini):
    cfg = copy.deepcopy(mini)
    skip = [k for k in Study(cfg, tmp_path).planned_keys() if k.env in ("walker2d", "hopper")]
    write_fake_results(tmp_path / "res", cfg, skip=skip, with_batches=False)
    paths = targets.run("fig2", "mini", tmp_path / "res", tmp_path / "out", cfg=cfg)
    assert (tmp_path / "out" / "fig2.pdf") in paths
    assert pd.read_csv(tmp_path / "out" / "data" / "fig2.csv").empty
    # no batches: Table 1 is written, empty, and says which runs lack them
    targets.run("table1", "mini", tmp_path / "res", tmp_path / "out", cfg=cfg)
    assert "Missing batches" in (tmp_path / "out" / "table1_novelty.md").read_text()


def test_one_seed_profile_gives_points_without_cis(tmp_path):
    smoke = load_profile("smoke")
    write_fake_results(tmp_path / "res", smoke)
    targets.run("all", "smoke", tmp_path / "res", tmp_path / "out")
    claims = pd.read_csv(tmp_path / "out" / "claims.csv")
    assert not claims.verdict.str.startswith("holds").any()  # one seed decides nothing
    assert "(no CI)" in (tmp_path / "out" / "table1_novelty.md").read_text()


def test_figures_say_which_profile_and_seeds(mini, tmp_path):
    note = figures.profile_note(Study(mini, tmp_path), [0, 1])
    assert "profile mini" in note and "NOT the paper's numbers" in note and "2 seeds (0, 1)" in note
    assert "NOT" not in figures.profile_note(Study(load_profile("paper"), tmp_path), [0, 1, 2, 3, 4])


def test_normalisation_uses_the_random_policy_returns_of_deployment_0(results, mini):
    from analysis.results import Study
    from analysis.summaries import normalised_final_returns, random_reference
    study = Study(mini, results)
    e = study.random_returns
    assert (e.deployment == 0).all() and len(e) > 0
    ref = random_reference(study)
    for env in mini["envs"]:
        np.testing.assert_allclose(ref[env], e[e.env == env]["return"].mean())
    scores = normalised_final_returns(study)
    assert np.allclose(scores.random, scores.env.map(ref))


def test_table1_falls_back_to_each_runs_novelty_csv_without_batches(results, mini, tmp_path):
    """Committed mini results carry novelty.csv but no batches: Table 1 must come out the same."""
    from analysis.results import Study
    from analysis.summaries import novelty
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    study = Study(mini, copy)
    for key in study.novelty_keys():
        d = key.path(copy)
        pd.DataFrame(metrics.novelty_rows(study.batch_obs(key))).to_csv(d / "novelty.csv", index=False)
        shutil.rmtree(d / "batches")
    with_batches, _ = novelty(Study(mini, results))
    from_csv, missing = novelty(Study(mini, copy))
    assert not missing
    pd.testing.assert_frame_equal(with_batches.reset_index(drop=True), from_csv.reset_index(drop=True))


# ---- issue 14: MUSBO's diagnostics, the readings figure, Table 1 under both readings ----

def _scalars(rows):
    return pd.DataFrame(rows, columns=["deployment", "phase", "step", "name", "value"])


def test_diagnostics_reduce_each_deployment_and_name_what_is_missing(results, mini, tmp_path):
    copy_root = tmp_path / "results"
    shutil.copytree(results, copy_root)
    study = Study(mini, copy_root)
    key = RunKey("runs", "musbo", "halfcheetah", "500k", 0)
    _scalars([(1, "labels", 0, "eq9_mean", 1.0), (2, "labels", 0, "eq9_mean", 0.25),
              (2, "policy", 0, "eq12_mean", 0.5), (2, "policy", 1, "eq12_mean", 0.7),          # mean over iterations
              (2, "policy", 0, "mean_reward_x_horizon", 10.0), (2, "policy", 1, "mean_reward_x_horizon", 30.0)]  # the last
             ).to_csv(key.path(copy_root) / "scalars.csv", index=False)
    from analysis.summaries import diagnostics
    data, lacking = diagnostics(study)
    run = data[(data.name == "musbo") & (data.env == "halfcheetah") & (data.seed == 0)].set_index(["quantity", "deployment"])
    assert run.loc[("eq9_mean", 2), "value"] == 0.25
    assert run.loc[("eq12_mean", 2), "value"] == pytest.approx(0.6)
    assert run.loc[("imagined_return", 2), "value"] == 30.0
    assert key not in lacking["eq9_mean"] and key in lacking["live_imagined_samples"]
    assert not any(k.name == "mopo" for k in lacking["eq9_mean"])     # MOPO has no eq. 9 to miss
    paths = figures.diagnostics(study, tmp_path / "out")
    assert (tmp_path / "out" / "diagnostics.pdf") in paths
    summary = pd.read_csv(tmp_path / "out" / "data" / "diagnostics.csv")
    assert set(summary.quantity) >= {"eq9_mean", "eq12_mean", "imagined_return", "real_return"}


def test_readings_figure_compares_each_reading_with_default_musbo(results, mini, tmp_path):
    from analysis.synthetic import write_run
    cfg = copy.deepcopy(mini)
    cfg["readings"] = ["eq22_variance"]
    cfg["reading_switches"] = {"eq22_variance": ["musbo.eq22_reading=variance"]}
    copy_root = tmp_path / "results"
    shutil.copytree(results, copy_root)
    study = Study(cfg, copy_root)
    keys = figures.reading_keys(study)
    assert [str(k) for k in keys] == [f"readings/eq22_variance/{cfg['ablation_env']}/{cfg['ablation_budget']}/seed{s}"
                                      for s in cfg["ablation_seeds"]]
    for k in keys:
        write_run(copy_root, k, cfg, with_batches=False)
    figures.readings(study, tmp_path / "out")
    finals = pd.read_csv(tmp_path / "out" / "data" / "readings_final.csv").set_index("name")
    last = study.deployments(cfg["ablation_env"])
    expected = np.mean([pd.read_csv(k.path(copy_root) / "metrics.csv").set_index("deployment")
                        .eval_return_mean[last] for k in keys])
    assert finals.loc["eq22_variance", "mean"] == pytest.approx(expected)
    assert "musbo" in finals.index and (tmp_path / "out" / "readings.pdf").is_file()


def test_readings_figure_puts_a_baselines_reading_beside_its_own_defaults(results, mini, tmp_path):
    """A reading that names algos and envs: BREMEN's runs sit under readings/<reading>/bremen/<env>/ and
    are drawn and summarised against BREMEN's default runs on that env (not MUSBO's)."""
    from analysis.synthetic import write_run
    cfg = copy.deepcopy(mini)
    cfg["readings"] = ["batch_full"]
    cfg["reading_switches"] = {"batch_full": {"set": ["trpo.batch_assembly=full"], "algos": ["musbo", "bremen"],
                                              "envs": ["hopper"]}}
    copy_root = tmp_path / "results"
    shutil.copytree(results, copy_root)
    study = Study(cfg, copy_root)
    keys = figures.reading_keys(study)
    budget = cfg["ablation_budget"]
    assert [str(k) for k in keys] == [f"readings/{n}/hopper/{budget}/seed{s}" for n in ("batch_full", "batch_full/bremen")
                                      for s in cfg["ablation_seeds"]]
    assert {(k.name, k.env) for k in figures.reading_reference_keys(study)} == {
        ("musbo", cfg["ablation_env"]), ("musbo", "hopper"), ("bremen", "hopper")}
    for k in keys:
        write_run(copy_root, k, cfg, with_batches=False)
    figures.readings(study, tmp_path / "out")
    finals = pd.read_csv(tmp_path / "out" / "data" / "readings_final.csv").set_index(["name", "env"])
    last = study.deployments("hopper")
    for name, runs in (("batch_full/bremen", [k for k in keys if k.name == "batch_full/bremen"]),
                       ("bremen", [k for k in figures.reading_reference_keys(study) if k.name == "bremen"])):
        expected = np.mean([pd.read_csv(k.path(copy_root) / "metrics.csv").set_index("deployment")
                            .eval_return_mean[last] for k in runs])
        assert finals.loc[(name, "hopper"), "mean"] == pytest.approx(expected, abs=0.01)  # the CSV keeps 2 decimals
    drawn = pd.read_csv(tmp_path / "out" / "data" / "readings.csv")
    assert {("batch_full/bremen", "hopper"), ("bremen", "hopper"), ("batch_full", "hopper"), ("musbo", "hopper")} \
        <= set(zip(drawn.name, drawn.env))


def test_table1_shows_both_readings_for_every_env_with_5_deployments(made_all, mini):
    out, _ = made_all
    t1 = pd.read_csv(out / "table1_novelty.csv")
    five = [e for e in mini["envs"] if Study(mini, out).deployments(e) == 5]
    assert set(t1.env) == set(five)
    assert (t1.musbo_nn_mean >= t1.musbo_all_pairs_mean).all()   # a max over earlier states >= their mean
    text = (out / "table1_novelty.md").read_text()
    assert "nearest neighbour" in text and "Closest to the paper's values" in text


def test_missing_runs_lists_table1_runs_only_when_neither_novelty_csv_nor_batches_exist(results, mini, tmp_path):
    """Committed mini runs carry novelty.csv and no batches: Table 1 reads them, so they are not missing."""
    from analysis.results import Study
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    study = Study(mini, copy)
    keys = study.novelty_keys()
    for key in keys:
        d = key.path(copy)
        pd.DataFrame(metrics.novelty_rows(study.batch_obs(key))).to_csv(d / "novelty.csv", index=False)
        shutil.rmtree(d / "batches")
    section = "Table 1: runs present with neither"
    assert f"## {section} `novelty.csv` nor all `batches/deployment_i.npz`: 0 runs" in Study(mini, copy).missing_report()
    (keys[0].path(copy) / "novelty.csv").unlink()
    report = Study(mini, copy).missing_report()
    assert ": 1 runs" in report.split(section)[1].splitlines()[0] and f"`{keys[0]}`" in report


def test_claims_about_every_env_are_not_judged_on_a_budget_run_on_some_envs(results, mini, tmp_path):
    """C10 and C15 speak of all envs: a budget whose runs cover one env (the medium grid's 250k
    half began with HalfCheetah alone) gives them no verdict, and says how many envs it has."""
    from analysis.claims import collect_claims
    whole = {c.id: c for c in collect_claims(Study(mini, results))}
    assert whole["C15-250k"].verdict == "holds" and "envs)" not in whole["C15-250k"].ours
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    for key in Study(mini, copy).main_keys():
        if key.budget == "250k" and key.env != "halfcheetah":
            shutil.rmtree(key.path(copy))
    part = {c.id: c for c in collect_claims(Study(mini, copy))}
    assert part["C15-500k"].verdict == "holds"
    for cid in ("C15-250k", "C10"):
        assert part[cid].verdict.startswith("inconclusive (runs missing"), (cid, part[cid].verdict)
        assert "(1 of 5 envs)" in part[cid].ours, cid
