"""MUSBO (the paper's Algorithm 1): one deployment = label the new batch, retrain the labeler
and the dynamics on D_all, clone the data with uncertainty weights, improve the policy with
uncertainty-weighted TRPO in the model, deploy the exploration policy of eq. 22.

Equations are those of ../shared/spec/MUSBO.md; config keys are in config/paper.yaml (run.defaults
.musbo and friends); docs/paper_to_code.md maps each to this file."""
from __future__ import annotations

import numpy as np
import torch

from algos.core.ensemble import DynamicsEnsemble
from algos.core.model_trpo import (clone_policy, fit_ensemble, make_ensemble, make_policy, prediction_box,
                                   train_in_model)
from algos.core.scalars import Scalars
from algos.core.seeding import rngs, stream_seed


class MUSBO:
    def __init__(self, env_name: str, cfg: dict, obs_dim: int, act_dim: int, device, seed: int):
        self.env, self.cfg, self.device, self.seed = env_name, cfg, device, seed
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.m = cfg["musbo"]
        self.dynamics = make_ensemble(cfg["dynamics"], obs_dim, act_dim, device, probabilistic=False)  # M-hat-theta
        self.labeler = make_ensemble(cfg["labeler"], obs_dim, act_dim, device, probabilistic=True)     # P-hat-phi
        self.policy = make_policy(cfg, obs_dim, act_dim, device)
        self.labeler_ready = False  # no labeler before B(1) has been seen
        self.scalars = Scalars()  # diagnostics; the run hands in a file-backed one

    # ------------------------------------------------------------------ labels
    def _squared_error(self, diff: torch.Tensor) -> torch.Tensor:
        """||d||^2 over state dims, in raw units (as written) or per-dim standardised units."""
        if self.m["label_space"] == "normalized":
            diff = diff / self.labeler.target_norm.std[: self.obs_dim]
        return diff.square().sum(-1)

    @torch.no_grad()
    def label_batch(self, batch: dict, deployment: int) -> np.ndarray:
        """Eq. 9, on arrival of B(i), with the labeler trained on B(1..i-1); B(1) gets labels 1.
        U = 1 - clip(max_k ||s' - mu_k(s, a)||^2, 0, 1)  (label_reading=max_error, the default)
        U = max_k [1 - clip(||s' - mu_k(s, a)||^2, 0, 1)]  (label_reading=max_label, as typeset)"""
        n = len(batch["obs"])
        if not self.labeler_ready:
            return np.ones(n, np.float32)
        out = []
        for i in range(0, n, 8192):
            sl = slice(i, i + 8192)
            mu = self.labeler.predict(batch["obs"][sl], batch["act"][sl]).next_obs        # [K, n, d]
            err = self._squared_error(torch.as_tensor(batch["next_obs"][sl], device=mu.device) - mu)  # [K, n]
            clipped = err.clamp(0.0, self.m["label_clip_max"])
            if self.m["label_reading"] == "max_error":
                out.append(1.0 - clipped.max(0).values)
            else:
                out.append((1.0 - clipped).max(0).values)
        return torch.cat(out).cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def imagined_labels(self, obs: torch.Tensor, act: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Eq. 12: U(s, a) = exp(-alpha ||mu_k(s, a) - mu_l(s, a)||^2), k != l drawn per sample."""
        mu = self.labeler.predict(obs, act).next_obs                                       # [K, N, d]
        K, N = mu.shape[0], mu.shape[1]
        gen_device = generator.device
        k = torch.randint(K, (N,), generator=generator, device=gen_device)
        l = (k + torch.randint(1, K, (N,), generator=generator, device=gen_device)) % K   # l != k
        rows = torch.arange(N, device=mu.device)
        diff = mu[k.to(mu.device), rows] - mu[l.to(mu.device), rows]
        return torch.exp(-self.m["alpha"] * self._squared_error(diff))

    # ------------------------------------------------------------------ one deployment
    def train(self, dataset, deployment: int, timer) -> None:
        cfg, seed = self.cfg, self.seed
        data = dataset.all()
        weighted = self.m["uncertainty_weighting"]
        _, gen = rngs(seed, "labeler", deployment, device=self.device)
        with timer("labeler"):
            # Algorithm 1 line 3: retrain P-hat-phi on D_all with the Gaussian NLL (eq. 10).
            if not self.m["warm_start"]:
                self.labeler = make_ensemble(cfg["labeler"], self.obs_dim, self.act_dim, self.device, True)
            fit_ensemble(self.labeler, data, cfg["labeler"], gen)
            self.labeler_ready = True
        _, gen = rngs(seed, "dynamics", deployment, device=self.device)
        with timer("model"):
            # Eq. 8: M-hat-theta, N deterministic members, L2 loss on D_all.
            if not self.m["warm_start"]:
                self.dynamics = make_ensemble(cfg["dynamics"], self.obs_dim, self.act_dim, self.device, False)
            fit_ensemble(self.dynamics, data, cfg["dynamics"], gen, weight_decay=cfg["dynamics"]["weight_decay"])
        _, gen = rngs(seed, "bc", deployment, device=self.device)
        with timer("bc"):
            # Eq. 11: pi_init = argmin (1/|D|) sum 1/2 U(s, a) ||a - pi(s)||^2 (U kept from arrival).
            if self.m["reinit_policy"]:
                self.policy = make_policy(cfg, self.obs_dim, self.act_dim, self.device)
            weights = data["labels"] if weighted else np.ones_like(data["labels"])
            clone_policy(self.policy, data, weights, cfg, gen)
        _, gen = rngs(seed, "trpo", deployment, device=self.device)
        with timer("policy"):
            # Eqs. 12-13: TRPO on imagined rollouts, each sample's advantage weighted by eq. 12.
            label_fn = (lambda s, a: self.imagined_labels(s, a, gen)) if weighted else None
            train_in_model(self.policy, self.dynamics, dataset.start_states(cfg["start_states"]),
                           prediction_box(cfg["trpo"]["clip_predictions"], data), cfg, self.m["member_choice"], gen,
                           label_fn)

    # ------------------------------------------------------------------ acting
    def collection_policy(self, deployment: int):
        """Deployment 1: uniform random (None). Later: the exploration policy of eq. 22."""
        if deployment == 1:
            return None
        return ExplorationPolicy(self, stream_seed(self.seed, "explore", deployment))

    def eval_policy(self):
        return self.policy.numpy_policy("deterministic")

    def dynamics_model(self) -> DynamicsEnsemble:
        return self.dynamics

    def state_dict(self) -> dict:
        return {"dynamics": self.dynamics.state_dict(), "labeler": self.labeler.state_dict(),
                "policy": self.policy.state_dict(), "labeler_ready": self.labeler_ready}

    def load_state_dict(self, state: dict) -> None:
        self.dynamics.load_state_dict(state["dynamics"])
        self.labeler.load_state_dict(state["labeler"])
        self.policy.load_state_dict(state["policy"])
        self.labeler_ready = bool(state["labeler_ready"])


class ExplorationPolicy:
    """Eq. 22: a = tanh(mu(s)) + eps_c + eps_u, eps_c ~ N(0, sigma_c^2),
    eps_u ~ N(0, sigma^2) with sigma = U(a', s) (eq22) or 1 - U(a', s) (one_minus_u),
    a' = tanh(mu(s)) + eps_c and U from eq. 12 (no true s' exists before acting).
    exploration_noise=none drops eps_u and keeps eps_c (the ablation isolates the uncertainty term).

    It acts on numpy snapshots of the policy and of the labeler (the collector calls it once
    per env step with one state, where torch's per-call overhead would dominate); `labels`
    is eq. 12 as MUSBO.imagined_labels computes it, with the pair k != l drawn from numpy."""

    def __init__(self, algo: MUSBO, seed: int):
        self.mode, self.act_dim = algo.m["exploration_noise"], algo.act_dim
        self.sigma_c, self.alpha = algo.m["exploration_const_std"], algo.m["alpha"]
        self.mean = algo.policy.numpy_policy("deterministic", clip=False)
        self.labeler_means = algo.labeler.numpy_next_obs_means()
        self.members = algo.labeler.members
        # label_space=normalized measures eq. 12's distance in per-dim standardised units
        self.inv_scale = (1.0 / algo.labeler.target_norm.std[: algo.obs_dim].cpu().numpy()
                          if algo.m["label_space"] == "normalized" else None)
        self.rng = np.random.default_rng(seed)

    def labels(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        """Eq. 12: U(s, a) = exp(-alpha ||mu_k(s, a) - mu_l(s, a)||^2), k != l drawn per sample."""
        mu = self.labeler_means(obs, act)                                      # [K, n, d]
        n = mu.shape[1]
        k = self.rng.integers(self.members, size=n)
        l = (k + self.rng.integers(1, self.members, size=n)) % self.members  # l != k
        diff = mu[k, np.arange(n)] - mu[l, np.arange(n)]
        if self.inv_scale is not None:
            diff = diff * self.inv_scale
        return np.exp(-self.alpha * np.square(diff).sum(-1))

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        a_prime = self.mean(obs) + self.rng.normal(0.0, self.sigma_c, size=(len(obs), self.act_dim))
        if self.mode == "none":
            return a_prime.astype(np.float32)
        u = self.labels(obs, np.clip(a_prime, -1, 1))
        sigma = u if self.mode == "eq22" else 1.0 - u
        return (a_prime + self.rng.normal(size=a_prime.shape) * sigma[:, None]).astype(np.float32)
