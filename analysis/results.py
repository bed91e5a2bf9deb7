"""Run outputs on disk, as planned by the profile's grid: which runs exist, which are
missing, and their files as tables.

Layout (the contract of `python -m algos.run`):
    RESULTS/runs/{algo}/{env}/{budget}/seed{seed}/            the main grid
    RESULTS/ablations/{ablation}/{env}/{budget}/seed{seed}/   MUSBO with one switch changed
A run exists when its metrics.csv exists (it is written when the run completes) and it passes
the input checks (`Study.check`): the run's own config.yaml names this profile and this run, its
identity.json config hash is the hash of the config the profile resolves for its cell (else the
differing keys are named), and metrics.csv, eval_returns.csv, model_eval.csv and novelty.csv
(each where present) have their columns, numbers only, finite and plausible values (RANGES), and
deployments 1..I (novelty: 2..I) exactly once (eval_returns: eval_episodes times). A run that
fails is excluded: listed with its reason in missing_runs.md, never plotted, counted in the
footnotes. A batch file that cannot be read is skipped: Table 1 takes the run's novelty.csv.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from algos.config import ConfigError, _flatten, config_hash, read_config_file, resolve_run_config, variant_of
from analysis.profile import env_run_config

# Table 1 and Fig. 6 (section 5 of the paper) are at I x B = 500k.
SECTION5_BUDGET = "500k"
# Fig. 6 compares these two (the paper's choice).
MODEL_EVAL_ALGOS = ("musbo", "bremen")
KEY_COLUMNS = ["kind", "name", "env", "budget", "seed"]
# metrics.csv of a run (algos/run.py METRIC_COLUMNS): every column numeric, every value finite.
METRIC_COLUMNS = ["deployment", "samples_total", "eval_return_mean", "eval_return_std", "eval_episodes",
                  "collect_s", "model_s", "labeler_s", "bc_s", "policy_s", "eval_s"]
# The other files of a run that the analysis reads (algos/run.py), each checked where present:
# file -> (its columns, the columns it may lack (older runs), the first deployment it holds);
# eval_returns.csv holds eval_episodes rows per deployment, deployment 0 being the random policy.
RUN_TABLES = {"eval_returns.csv": (["deployment", "episode", "return"], [], 0),
              "model_eval.csv": (["deployment", "energy_distance", "trajectory_mse"], [], 1),
              "novelty.csv": (["deployment", "cosine_similarity"], ["nn_cosine_similarity"], 2)}
# The plausible values of a column (any file): an episode return of any env of the grid (1000
# steps) lies far inside +-1e5; distances are not negative; a cosine lies in [-1, 1].
RETURN_BOUND = 1e5
RANGES = {"eval_return_mean": (-RETURN_BOUND, RETURN_BOUND), "return": (-RETURN_BOUND, RETURN_BOUND),
          "energy_distance": (0.0, np.inf), "trajectory_mse": (0.0, np.inf),
          "cosine_similarity": (-1 - 1e-6, 1 + 1e-6), "nn_cosine_similarity": (-1 - 1e-6, 1 + 1e-6)}


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


def cell_config(cfg: dict, key: RunKey) -> dict:
    """The config that the profile (or the workflow's merged config) resolves for one cell of the
    grid, exactly as the workflow does before any job (rules/common.smk, _resolve_every_run)."""
    algo, switches = variant_of(cfg, key.kind, key.name)
    return resolve_run_config(cfg["profile"], algo, key.env, key.budget, key.seed, switches, workflow_config=cfg)


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
        self.unreadable_batches: dict[RunKey, str] = {}  # filled by batch_obs (Table 1 names them)

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
            try:
                expected = cell_config(self.cfg, key)
            except (ConfigError, KeyError) as err:  # a config the workflow would refuse
                self._checked[key] = f"the profile's config does not resolve for it ({type(err).__name__}: {err})"
            else:
                self._checked[key] = _check_run(key.path(self.root), key, self.profile, expected)
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
        """The obs of B(1..I) of one run, or None if the run or any batch file is missing or
        unreadable (then named in `unreadable_batches`)."""
        files = self.batch_files(key)
        if not self.exists(key) or not all(f.is_file() for f in files):
            return None
        out = []
        for f in files:
            try:
                with np.load(f, allow_pickle=False) as z:
                    obs = np.asarray(z["obs"])
                if obs.ndim != 2 or obs.dtype.kind not in "fiu" or not np.isfinite(obs).all():
                    raise ValueError(f"obs of shape {obs.shape}, or not finite")
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
                self.unreadable_batches[key] = f"{f.relative_to(self.root)} is unreadable ({type(err).__name__})"
                return None
            out.append(obs)
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
def _check_run(d: Path, key: RunKey, profile: str, expected: dict) -> str | None:
    """Why the run in `d` cannot be used (one line), or None. `expected`: the config the profile
    resolves for the run's cell (cell_config)."""
    try:
        cfg = read_config_file(d / "config.yaml")
    except OSError as err:
        return f"config.yaml is missing or unreadable ({type(err).__name__})"
    except ConfigError as err:
        return f"config.yaml is unreadable ({err})"
    if not isinstance(cfg, dict) or cfg.get("profile") != profile:
        found = cfg.get("profile") if isinstance(cfg, dict) else None
        return f"its config.yaml is profile {found!r}, not {profile!r}"
    identity = {"env": key.env, "budget": key.budget, "seed": key.seed}
    if key.kind == "runs":
        identity["algo"] = key.name
    wrong = [f"{k}={cfg.get(k)!r}" for k, v in identity.items() if k in cfg and cfg[k] != v]
    if wrong:
        return f"its config.yaml is another run ({', '.join(wrong)})"
    reason = _config_difference(d, cfg, expected)
    if reason:
        return reason
    deployments, episodes = expected["deployments"], expected["eval_episodes"]
    m, reason = _read_table(d / "metrics.csv", METRIC_COLUMNS)
    if reason or (reason := _deployment_problem(m, "metrics.csv", 1, deployments)):
        return reason
    if (m["eval_episodes"] != episodes).any():
        return f"metrics.csv eval_episodes is {_ranges(m['eval_episodes'])}, not the config's {episodes}"
    for name, (columns, optional, first) in RUN_TABLES.items():
        if (d / name).is_file():
            t, reason = _read_table(d / name, columns, optional)
            per = episodes if name == "eval_returns.csv" else 1
            if reason or (reason := _deployment_problem(t, name, first, deployments, per)):
                return reason
    return None


def _config_difference(d: Path, own: dict, expected: dict) -> str | None:
    """None when the run's identity.json holds the hash of `expected`; else what differs, from
    the run's config.yaml (fully resolved) against `expected`."""
    try:
        recorded = str(json.loads((d / "identity.json").read_text())["config_hash"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"identity.json is missing or unreadable ({type(err).__name__})"
    wanted = config_hash(expected)
    if recorded == wanted:
        return None
    ours, theirs = _flatten(own), _flatten(expected)
    keys = sorted(k for k in ours.keys() | theirs.keys() if k not in ours or k not in theirs or ours[k] != theirs[k])

    def value(flat, k, where):
        return f"{flat[k]!r} in the {where}" if k in flat else f"absent in the {where}"
    what = "; ".join(f"{k}: {value(ours, k, 'run')}, {value(theirs, k, 'profile')}" for k in keys[:4])
    what += f"; and {len(keys) - 4} more key(s)" if len(keys) > 4 else ""
    return (f"made with another config than the profile's for this run (config hash {recorded[:12]}, the "
            f"profile's {wanted[:12]}): {what or 'its identity.json differs, its config.yaml does not'}")


def _read_table(path: Path, columns, optional=()) -> tuple[pd.DataFrame | None, str | None]:
    """A CSV of the run with `columns` (and `optional` ones, where present) numeric, finite and in
    their RANGES; or why not."""
    name = path.name
    try:
        t = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as err:
        return None, f"{name} is unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'empty'})"
    absent = [c for c in columns if c not in t.columns]
    if absent:
        return None, f"{name} lacks the column(s) {', '.join(absent)}"
    for c in [*columns, *(c for c in optional if c in t.columns)]:
        if not pd.api.types.is_numeric_dtype(t[c]) or pd.api.types.is_bool_dtype(t[c]):
            return None, f"{name} column {c} is not numeric"
        values = t[c].to_numpy(dtype=float)
        if not np.isfinite(values).all():
            return None, f"{name} column {c} holds a non-finite value"
        low, high = RANGES.get(c, (-np.inf, np.inf))
        outside = values[(values < low) | (values > high)]
        if len(outside):
            return None, f"{name} column {c} holds {outside[0]:g}, outside its plausible range [{low:g}, {high:g}]"
    return t, None


def _deployment_problem(t: pd.DataFrame, name: str, first: int, last: int, per: int = 1) -> str | None:
    """None when `t` holds each deployment first..last exactly `per` times."""
    got = t["deployment"].tolist()
    if sorted(got) == sorted(list(range(first, last + 1)) * per):
        return None
    if per > 1:
        counts = t["deployment"].value_counts().sort_index()
        shown = ", ".join(f"{dep:g}: {n}" for dep, n in list(counts.items())[:12])
        return (f"{name} does not hold eval_episodes={per} episodes for each of deployments {first}..{last} "
                f"(per deployment: {{{shown}}})")
    dup = sorted({int(x) for x in got if got.count(x) > 1})
    return (f"{name} deployments are {_ranges(got)}, not {first}..{last} exactly once"
            + (f" (repeated: {dup})" if dup else ""))


def _ranges(values) -> str:
    shown = [int(v) if float(v).is_integer() else v for v in values]
    return str(shown[:12])[:-1] + (", ...]" if len(shown) > 12 else "]")
