"""Run outputs on disk, as planned by the profile's grid: which runs exist, which are
missing, and their files as tables.

Layout (the contract of `python -m algos.run`):
    RESULTS/runs/{algo}/{env}/{budget}/seed{seed}/            the main grid
    RESULTS/ablations/{ablation}/{env}/{budget}/seed{seed}/   MUSBO with one switch changed
A run exists when its metrics.csv exists (it is written when the run completes) and it passes
the input checks (`Study.check`: metrics.csv columns and types, deployments 1..I exactly once,
finite values, the run's own config.yaml naming this profile and this run). A run that fails is
excluded: listed with its reason in missing_runs.md, never plotted, counted in the footnotes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from analysis.profile import env_run_config

# Table 1 and Fig. 6 (section 5 of the paper) are at I x B = 500k.
SECTION5_BUDGET = "500k"
# Fig. 6 compares these two (the paper's choice).
MODEL_EVAL_ALGOS = ("musbo", "bremen")
KEY_COLUMNS = ["kind", "name", "env", "budget", "seed"]
# metrics.csv of a run (algos/run.py METRIC_COLUMNS): every column numeric, every value finite.
METRIC_COLUMNS = ["deployment", "samples_total", "eval_return_mean", "eval_return_std", "eval_episodes",
                  "collect_s", "model_s", "labeler_s", "bc_s", "policy_s", "eval_s"]


def workflow_command(profile: str) -> str:
    """The README's command that produces every run of a profile (and the figures)."""
    config = "" if profile == "paper" else f" --configfile config/{profile}.yaml"
    return f".venv/bin/snakemake --cores 8 all{config}"  # targets before --configfile


class NoResultsError(RuntimeError):
    """No run of the profile exists: nothing to analyse."""


@dataclass(frozen=True, order=True)
class RunKey:
    kind: str  # "runs" (name = algorithm) or "ablations" (name = ablation)
    name: str
    env: str
    budget: str
    seed: int

    def path(self, root: Path) -> Path:
        return Path(root) / self.kind / self.name / self.env / self.budget / f"seed{self.seed}"

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}/{self.env}/{self.budget}/seed{self.seed}"


def _seed_of(dirname: str) -> int | None:
    """N of a canonical `seedN` (seed00 is no run directory: the run writes seed0)."""
    digits = dirname[4:]
    return int(digits) if dirname.startswith("seed") and digits.isdigit() and digits == str(int(digits)) else None


class Study:
    """One profile's grid (from its config) and its results directory."""

    def __init__(self, cfg: dict, results_dir: Path | str):
        self.cfg = cfg
        self.root = Path(results_dir)
        self.profile = cfg.get("profile", "?")
        self.algos = list(cfg["algos"])
        self.seeds = [int(s) for s in cfg["seeds"]]
        self.ablation_seeds = [int(s) for s in cfg["ablation_seeds"]]
        self._checked: dict[RunKey, str | None] = {}

    # ---- the plan ----
    def deployments(self, env: str) -> int:
        return int(env_run_config(self.cfg, env)["deployments"])

    def main_keys(self) -> list[RunKey]:
        c = self.cfg
        return [RunKey("runs", a, e, b, s) for a in self.algos for e in c["envs"]
                for b in c["budgets"] for s in self.seeds]

    def ablation_keys(self) -> list[RunKey]:
        c = self.cfg
        return [RunKey("ablations", ab, c["ablation_env"], c["ablation_budget"], s)
                for ab in c.get("ablations", []) for s in self.ablation_seeds]

    def ablation_reference_keys(self) -> list[RunKey]:
        """Full MUSBO on the ablation env and budget: what each ablation is compared with."""
        c = self.cfg
        return [RunKey("runs", "musbo", c["ablation_env"], c["ablation_budget"], s) for s in self.ablation_seeds]

    def novelty_keys(self) -> list[RunKey]:
        return [RunKey("runs", a, self.cfg["novelty_env"], SECTION5_BUDGET, s)
                for a in self.algos for s in self.ablation_seeds]

    def model_eval_keys(self) -> list[RunKey]:
        return [RunKey("runs", a, self.cfg["model_eval_env"], SECTION5_BUDGET, s)
                for a in MODEL_EVAL_ALGOS for s in self.ablation_seeds]

    def curve_keys(self, names, env: str, budget: str, seeds, kind: str = "runs") -> list[RunKey]:
        return [RunKey(kind, n, env, budget, s) for n in names for s in seeds]

    # ---- what exists ----
    def exists(self, key: RunKey) -> bool:
        """Complete (metrics.csv written) and passing the input checks."""
        return (key.path(self.root) / "metrics.csv").is_file() and self.check(key) is None

    def check(self, key: RunKey) -> str | None:
        """Why the run cannot be used, or None. Only for runs with a metrics.csv."""
        if key not in self._checked:
            self._checked[key] = _check_run(key.path(self.root), key, self.profile, self.deployments(key.env))
        return self._checked[key]

    @property
    def excluded(self) -> dict[RunKey, str]:
        """Planned runs with a metrics.csv that fail the input checks, and why."""
        return {k: self.check(k) for k in self.planned_keys()
                if (k.path(self.root) / "metrics.csv").is_file() and self.check(k) is not None}

    def exclusion_note(self, keys=None) -> str:
        """For figure footnotes: how many of `keys` (default: all planned) were excluded."""
        keys = self.planned_keys() if keys is None else keys
        n = sum(1 for k in keys if k in self.excluded)
        return f"{n} run{'s' if n != 1 else ''} excluded by the input checks" if n else ""

    def missing(self, keys) -> list[RunKey]:
        return [k for k in keys if not self.exists(k)]

    def planned_keys(self) -> list[RunKey]:
        return sorted(set(self.main_keys()) | set(self.ablation_keys())
                      | set(self.novelty_keys()) | set(self.model_eval_keys()))

    def found_keys(self) -> list[RunKey]:
        """Every run with a metrics.csv under the results dir, in the grid or not."""
        found = []
        for f in self.root.glob("*/*/*/*/seed*/metrics.csv"):
            seed_dir = f.parent
            kind, name, env, budget = seed_dir.relative_to(self.root).parts[:4]
            seed = _seed_of(seed_dir.name)
            if kind in ("runs", "ablations") and seed is not None:
                found.append(RunKey(kind, name, env, budget, seed))
        return sorted(found)

    def require_runs(self) -> None:
        """Raise a NoResultsError that says how to produce the runs if none exists."""
        if any(self.exists(k) for k in self.planned_keys()):
            return
        where = "does not exist" if not self.root.is_dir() else "holds no completed run of this profile's grid"
        excluded = self.excluded
        if excluded:
            first = min(excluded)
            where = (f"holds no usable run of profile {self.profile!r}: all {len(excluded)} complete runs fail the "
                     f"input checks, e.g. {first}: {excluded[first]}")
        raise NoResultsError(
            f"{self.root} {where} (looked for {self.root}/runs/ALGO/ENV/BUDGET/seedN/metrics.csv).\n"
            f"Produce the runs of profile {self.profile!r} first, e.g. the whole workflow:\n"
            f"    {workflow_command(self.profile)}\n"
            f"or a single run:\n"
            f"    python -m algos.run --profile {self.profile} --algo musbo --env {self.cfg['envs'][0]} "
            f"--budget {self.cfg['budgets'][0]} --seed {self.seeds[0]} "
            f"--out {self.root}/runs/musbo/{self.cfg['envs'][0]}/{self.cfg['budgets'][0]}/seed{self.seeds[0]}")

    # ---- files as tables ----
    def _read_runs(self, keys, filename: str) -> pd.DataFrame:
        frames = []
        for k in keys:
            f = k.path(self.root) / filename
            if self.exists(k) and f.is_file():
                df = pd.read_csv(f)
                for col, val in zip(KEY_COLUMNS, (k.kind, k.name, k.env, k.budget, k.seed)):
                    df[col] = val
                frames.append(df)
        if not frames:
            return pd.DataFrame(columns=KEY_COLUMNS + ["deployment"])
        return pd.concat(frames, ignore_index=True)

    @cached_property
    def metrics(self) -> pd.DataFrame:
        """metrics.csv of every existing planned run, one row per (run, deployment)."""
        return self._read_runs(self.planned_keys(), "metrics.csv")

    def curves(self, kind: str, names, env: str, budget: str, seeds) -> pd.DataFrame:
        m = self.metrics
        return m[(m.kind == kind) & m.name.isin(list(names)) & (m.env == env)
                 & (m.budget == budget) & m.seed.isin(list(seeds))]

    @cached_property
    def random_returns(self) -> pd.DataFrame:
        """Eval returns of the uniform random policy (deployment 0 of eval_returns.csv)."""
        e = self._read_runs([k for k in self.planned_keys() if k.kind == "runs"], "eval_returns.csv")
        return e[e.deployment == 0] if "return" in e else e

    def model_eval(self) -> pd.DataFrame:
        return self._read_runs(self.model_eval_keys(), "model_eval.csv")

    def batch_files(self, key: RunKey) -> list[Path]:
        d = key.path(self.root) / "batches"
        return [d / f"deployment_{i}.npz" for i in range(1, self.deployments(key.env) + 1)]

    def batch_obs(self, key: RunKey) -> list[np.ndarray] | None:
        """The obs of B(1..I) of one run, or None if the run or any batch file is missing."""
        files = self.batch_files(key)
        if not self.exists(key) or not all(f.is_file() for f in files):
            return None
        out = []
        for f in files:
            with np.load(f) as z:
                out.append(np.asarray(z["obs"]))
        return out

    def provenance(self) -> list[dict]:
        out = []
        for k in self.planned_keys():
            f = k.path(self.root) / "provenance.json"
            if self.exists(k) and f.is_file():
                try:
                    out.append({"run": str(k), **json.loads(f.read_text())})
                except json.JSONDecodeError:
                    out.append({"run": str(k), "error": "unreadable provenance.json"})
        return out

    # ---- what is missing, as Markdown (written by every target: same content each time) ----

    def missing_report(self) -> str:
        def section(title, keys, what):
            lines = [f"## {title}: {what}", ""]
            lines += [f"- `{k}`" for k in keys] or ["- none"]
            return lines + [""]

        main, abl = self.main_keys(), self.ablation_keys()
        miss_main, miss_abl = self.missing(main), self.missing(abl)
        extra = sorted(set(self.found_keys()) - set(self.planned_keys()))
        no_batches = [k for k in self.novelty_keys()  # Table 1 reads the batches, else the run's novelty.csv
                      if self.exists(k) and not (k.path(self.root) / "novelty.csv").is_file()
                      and not all(f.is_file() for f in self.batch_files(k))]
        no_model_eval = [k for k in self.model_eval_keys()
                         if self.exists(k) and not (k.path(self.root) / "model_eval.csv").is_file()]
        lines = [f"# Missing runs: profile `{self.profile}`, results `{self.root}`", "",
                 "A run is missing when its `metrics.csv` is absent (written when the run completes) or when "
                 "it fails the input checks (listed with the reason under Excluded runs). "
                 "Figures and tables use the runs that exist and name the missing ones.", "",
                 f"Produce missing runs with the workflow (`{workflow_command(self.profile)}`) "
                 f"or one at a time: `python -m algos.run --profile {self.profile} --algo ALGO --env ENV "
                 f"--budget BUDGET --seed N --out {self.root}/runs/ALGO/ENV/BUDGET/seedN`.", ""]
        lines += section("Main grid (Figs. 2-5, aggregate, claims)", miss_main,
                         f"{len(main) - len(miss_main)} of {len(main)} runs present, {len(miss_main)} missing")
        lines += section("Ablation runs (ablation figure)", miss_abl,
                         f"{len(abl) - len(miss_abl)} of {len(abl)} runs present, {len(miss_abl)} missing")
        lines += section("Table 1: runs present with neither `novelty.csv` nor all `batches/deployment_i.npz`",
                         no_batches, f"{len(no_batches)} runs (re-run them to recreate both)")
        lines += section("Fig. 6: runs present without `model_eval.csv`", no_model_eval, f"{len(no_model_eval)} runs")
        excluded = self.excluded
        lines += [f"## Excluded runs (complete, but failing the input checks; counted as missing above): "
                  f"{len(excluded)}", ""]
        lines += [f"- `{k}`: {why}" for k, why in sorted(excluded.items())] or ["- none"]
        lines += ["", f"## Runs found outside this profile's grid (ignored): {len(extra)}", ""]
        lines += [f"- `{k}`" for k in extra] or ["- none"]
        return "\n".join(lines) + "\n"


# ---- the input checks of one run ----
def _check_run(d: Path, key: RunKey, profile: str, deployments: int) -> str | None:
    """Why the run in `d` cannot be used (one line), or None."""
    try:
        cfg = yaml.safe_load((d / "config.yaml").read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        return f"config.yaml is missing or unreadable ({type(err).__name__})"
    if not isinstance(cfg, dict) or cfg.get("profile") != profile:
        found = cfg.get("profile") if isinstance(cfg, dict) else None
        return f"its config.yaml is profile {found!r}, not {profile!r}"
    expected = {"env": key.env, "budget": key.budget, "seed": key.seed}
    if key.kind == "runs":
        expected["algo"] = key.name
    wrong = [f"{k}={cfg.get(k)!r}" for k, v in expected.items() if k in cfg and cfg[k] != v]
    if wrong:
        return f"its config.yaml is another run ({', '.join(wrong)})"
    try:
        m = pd.read_csv(d / "metrics.csv")
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as err:
        return f"metrics.csv is unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'empty'})"
    absent = [c for c in METRIC_COLUMNS if c not in m.columns]
    if absent:
        return f"metrics.csv lacks the column(s) {', '.join(absent)}"
    for c in METRIC_COLUMNS:
        if not pd.api.types.is_numeric_dtype(m[c]) or pd.api.types.is_bool_dtype(m[c]):
            return f"metrics.csv column {c} is not numeric"
        if not np.isfinite(m[c].to_numpy(dtype=float)).all():
            return f"metrics.csv column {c} holds a non-finite value"
    got = m["deployment"].tolist()
    if sorted(got) != list(range(1, deployments + 1)):
        dup = sorted({int(x) for x in got if got.count(x) > 1})
        return (f"metrics.csv deployments are {_ranges(got)}, not 1..{deployments} exactly once"
                + (f" (repeated: {dup})" if dup else ""))
    return None


def _ranges(values) -> str:
    shown = [int(v) if float(v).is_integer() else v for v in values]
    return str(shown[:12])[:-1] + (", ...]" if len(shown) > 12 else "]")
