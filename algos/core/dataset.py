"""The data of all deployments, D_all = B(1) u ... u B(i), with the batches kept apart and one
uncertainty label U-hat per transition, fixed when its batch arrived (eq. 9), and the
train / holdout splits of the model fits (`split`)."""
from __future__ import annotations

import numpy as np
import torch

from algos.config import HOLDOUT_SPLITS

FIELDS = ("obs", "act", "rew", "next_obs", "terminated", "truncated", "episode_start")


class DeploymentDataset:
    def __init__(self, obs_dim: int, act_dim: int):
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.batches: list[dict[str, np.ndarray]] = []
        self.labels: list[np.ndarray] = []
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def add(self, batch: dict[str, np.ndarray], labels: np.ndarray | None = None) -> None:
        """Append B(i) (a collector dict) with its labels U-hat [n] (default 1: B(1) has no
        earlier data to be labelled against)."""
        missing = [k for k in FIELDS if k not in batch]
        if missing:
            raise KeyError(f"batch lacks {missing}")
        n = len(batch["obs"])
        expected = {"obs": (n, self.obs_dim), "next_obs": (n, self.obs_dim), "act": (n, self.act_dim)}
        for key in FIELDS:
            shape = expected.get(key, (n,))
            if np.shape(batch[key]) != shape:
                raise ValueError(f"batch[{key!r}] has shape {np.shape(batch[key])}, expected {shape}")
        labels = np.ones(n, np.float32) if labels is None else np.asarray(labels, np.float32)
        if labels.shape != (n,):
            raise ValueError(f"labels have shape {labels.shape}, expected ({n},)")
        self.batches.append({k: np.array(batch[k]) for k in FIELDS})
        self.labels.append(labels.copy())
        self._cache.clear()

    def all(self, upto: int | None = None) -> dict[str, np.ndarray]:
        """B(1..upto) concatenated (all batches by default), with a "labels" entry."""
        k = len(self.batches) if upto is None else upto
        if not 1 <= k <= len(self.batches):
            raise IndexError(f"upto={upto} with {len(self.batches)} batches")
        if k not in self._cache:
            out = {f: np.concatenate([b[f] for b in self.batches[:k]]) for f in FIELDS}
            out["labels"] = np.concatenate(self.labels[:k])
            self._cache[k] = out
        return self._cache[k]

    def newest(self) -> dict[str, np.ndarray]:
        """The last batch B(i), with its "labels"."""
        if not self.batches:
            raise IndexError("the dataset is empty")
        return {**self.batches[-1], "labels": self.labels[-1]}

    def holdout_mask(self, fraction: float) -> np.ndarray:
        """[len(D_all)] bool: the last `fraction` of every batch, in its collection order (BREMEN's
        split: path_collection.py:54-70 keeps the first int(0.85 n) rows of each new batch for
        training and the rest for validation, recursive.py:210-213). A function of the batch
        alone, so a row's side is fixed when its batch arrives and never changes as D_all grows."""
        masks = []
        for b in self.batches:
            n = len(b["obs"])
            mask = np.zeros(n, bool)
            mask[int(n * (1.0 - fraction)):] = True
            masks.append(mask)
        return np.concatenate(masks)

    def split(self, kind: str, fraction: float, generator: torch.Generator | None = None,
              holdout_max: int | None = None, newest_only: bool = False) -> tuple[dict, dict]:
        """(train, holdout) dicts of D_all (with "labels"), or of the newest batch B(i) alone.
        batch_tail: `holdout_mask(fraction)` (BREMEN; MUSBO follows it).
        random: a random `fraction` of D_all, capped at `holdout_max` rows, drawn from
        `generator` at every call (MOPO's bnn.py:394-397; the project's old split)."""
        data = self.newest() if newest_only else self.all()
        n = len(data["obs"])
        if kind == "batch_tail":
            hold = self.holdout_mask(fraction)[-n:]
        elif kind == "random":
            n_hold = int(fraction * n) if holdout_max is None else min(int(fraction * n), int(holdout_max))
            gen_device = generator.device if generator is not None else "cpu"
            perm = torch.randperm(n, generator=generator, device=gen_device).cpu().numpy()
            hold = np.zeros(n, bool)
            hold[perm[:min(n_hold, n - 1)]] = True
        else:
            raise ValueError(f"the holdout split must be one of {HOLDOUT_SPLITS}, got {kind!r}")
        return ({k: v[~hold] for k, v in data.items()}, {k: v[hold] for k, v in data.items()})

    def start_states(self, mode: str = "episode_starts") -> np.ndarray:
        """Start states of imagined rollouts: the first observation of every episode recorded in
        D_all ("episode_starts", the initial-state distribution) or every state ("all_states")."""
        data = self.all()
        if mode == "episode_starts":
            return data["obs"][data["episode_start"]]
        if mode == "all_states":
            return data["obs"]
        raise ValueError(f"mode must be 'episode_starts' or 'all_states', got {mode!r}")

    def __len__(self) -> int:
        return sum(len(b["obs"]) for b in self.batches)
