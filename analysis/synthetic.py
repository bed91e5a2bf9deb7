"""FAKE run directories for the tests of analysis/ (and for trying the analysis before real
runs exist). Never read by any target: the numbers are made up, shaped like the output
contract of `python -m algos.run` (see analysis/results.py)."""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from algos.rundir import identity_of
from analysis.results import RunKey, Study, cell_config

# made-up learning speed per algorithm / ablation (MUSBO learns fastest, MOPO slowest)
_GAIN = {"musbo": 1.0, "bremen": 0.6, "mopo": 0.3}
_ENV_SCALE = {"walker2d": 3000.0, "hopper": 2500.0, "halfcheetah": 4000.0, "ant": 1500.0, "cheetah-run": 600.0}
_OBS_DIM = 6


def _curve(key: RunKey, n_deployments: int, rng: np.random.Generator) -> np.ndarray:
    gain = _GAIN.get(key.name, 0.8)  # ablations: between MUSBO and BREMEN
    scale = _ENV_SCALE.get(key.env, 1000.0) * (1.0 if key.budget == "500k" else 0.8)
    progress = np.arange(n_deployments) / max(n_deployments - 1, 1)
    base = -0.05 * scale  # the random policy's return
    return base + gain * scale * progress + rng.normal(0, 0.04 * scale, n_deployments) * (progress > 0)


def write_run(root: Path, key: RunKey, cfg: dict, with_batches: bool = True) -> Path:
    run_cfg = cell_config(cfg, key)  # the config the workflow would run: the analysis checks its hash
    n_dep, per_batch, n_eval = run_cfg["deployments"], run_cfg["batch_size"], run_cfg["eval_episodes"]
    rng = np.random.default_rng(zlib.crc32(str(key).encode()))
    d = key.path(root)
    d.mkdir(parents=True, exist_ok=True)
    means = _curve(key, n_dep, rng)
    episodes = means[:, None] + rng.normal(0, 0.02 * abs(means).max() + 1, (n_dep, n_eval))
    metrics = pd.DataFrame({
        "deployment": np.arange(1, n_dep + 1), "samples_total": per_batch * np.arange(1, n_dep + 1),
        "eval_return_mean": episodes.mean(1), "eval_return_std": episodes.std(1), "eval_episodes": n_eval,
        **{f"{p}_s": rng.uniform(0.1, 2.0, n_dep) for p in ("collect", "model", "labeler", "bc", "policy", "eval")}})
    random_policy = means[0] - 0.1 * abs(means[0]) + rng.normal(0, 1, n_eval)   # deployment 0
    pd.DataFrame([(0, e, r) for e, r in enumerate(random_policy)]
                 + [(i + 1, e, r) for i in range(n_dep) for e, r in enumerate(episodes[i])],
                 columns=["deployment", "episode", "return"]).to_csv(d / "eval_returns.csv", index=False)
    quality = 1.0 / (1.0 + _GAIN.get(key.name, 0.8) * np.arange(n_dep))
    pd.DataFrame({"deployment": np.arange(1, n_dep + 1),
                  "energy_distance": quality * rng.uniform(0.8, 1.2, n_dep),
                  "trajectory_mse": 10 * quality * rng.uniform(0.8, 1.2, n_dep)}).to_csv(d / "model_eval.csv", index=False)
    if with_batches:
        (d / "batches").mkdir(exist_ok=True)
        n = min(per_batch, 64)  # small batches keep the tests fast
        for i in range(1, n_dep + 1):
            centre = np.full(_OBS_DIM, 1.0) + _GAIN.get(key.name, 0.8) * (i - 1) * np.eye(_OBS_DIM)[i % _OBS_DIM]
            obs = (centre + rng.normal(0, 0.3, (n, _OBS_DIM))).astype(np.float32)
            np.savez(d / "batches" / f"deployment_{i}.npz", obs=obs, act=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
                     rew=rng.normal(size=n).astype(np.float32), next_obs=obs, terminated=np.zeros(n, bool),
                     truncated=np.zeros(n, bool), episode_start=np.arange(n) % 16 == 0)
    (d / "identity.json").write_text(json.dumps(identity_of(run_cfg), indent=2) + "\n")  # as a run's
    (d / "config.yaml").write_text(yaml.safe_dump(run_cfg, sort_keys=False))
    (d / "provenance.json").write_text(json.dumps({
        "git_commit": "fake000", "packages": {}, "device": "cpu", "seed": key.seed,
        "start_time": "2026-01-01T00:00:00", "end_time": "2026-01-01T00:01:00"}))
    metrics.to_csv(d / "metrics.csv", index=False)  # last: the run is complete
    return d


def write_fake_results(results_dir: Path | str, cfg: dict, skip=(), with_batches: bool = True) -> list[RunKey]:
    """Every planned run of the profile's grid except those in `skip` (RunKeys or their
    str); returns the keys written."""
    skip = {str(k) for k in skip}
    keys = [k for k in Study(cfg, results_dir).planned_keys() if str(k) not in skip]
    for k in keys:
        write_run(Path(results_dir), k, cfg, with_batches)
    return keys
