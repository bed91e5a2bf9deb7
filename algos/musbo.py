"""MUSBO (the paper's Algorithm 1): one deployment = label the new batch, retrain the labeler
and the dynamics on D_all, clone the data with uncertainty weights, improve the policy with
uncertainty-weighted TRPO in the model, deploy the exploration policy of eq. 22.

Equations are those of ../shared/spec/MUSBO.md; config keys are in config/paper.yaml (run.defaults
.musbo and friends); docs/paper_to_code.md maps each to this file."""
from __future__ import annotations

import math

import numpy as np
import torch

from algos.core.ensemble import DynamicsEnsemble
from algos.core.bc import clone_policy, handoff_of
from algos.core.model_trpo import make_policy, prediction_box, train_in_model
from algos.core.scalars import Scalars
from algos.core.seeding import rngs, stream_seed
from algos.core.training import Patience, fit_ensemble, make_ensemble


class MUSBO:
    reward_velocity_from = "next_obs"  # the state TRPO's model reward reads x-velocity from (envs/model_side.py)

    def __init__(self, env_name: str, cfg: dict, obs_dim: int, act_dim: int, device, seed: int):
        self.env, self.cfg, self.device, self.seed = env_name, cfg, device, seed
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.m = cfg["musbo"]
        self.dynamics = make_ensemble(cfg["dynamics"], obs_dim, act_dim, device, probabilistic=False)  # M-hat-theta
        self.labeler = make_ensemble(cfg["labeler"], obs_dim, act_dim, device, probabilistic=True)     # P-hat-phi
        self.policy = make_policy(cfg, obs_dim, act_dim, device)
        self.labeler_ready = False  # no labeler before B(1) has been seen
        # alpha of eq. 12: the paper's (musbo.alpha), or None until TRPO's first imagined batch of
        # the deployment calibrates it (musbo.eq12_alpha=calibrated; see imagined_labels)
        self.eq12_alpha = self.m["alpha"] if self.m["eq12_alpha"] == "paper" else None
        self.scalars = Scalars()  # diagnostics; the run hands in a file-backed one
        self._explorer = None     # the eq. 22 policy of the current collection (its noise is recorded)

    # ------------------------------------------------------------------ labels
    def _inv_std(self) -> torch.Tensor:
        """1 / the per-dimension std of the state delta s' - s over D_all as the labeler last fitted
        it (its target statistics, `labeler.target_norm.std[:obs_dim]`): the unit of std_sum, std_mean."""
        return 1.0 / self.labeler.target_norm.std[: self.obs_dim]

    def eq9_distance(self, diff: torch.Tensor) -> torch.Tensor:
        return label_distance(diff, self.m["eq9_distance"], self._inv_std())

    def eq12_distance(self, diff: torch.Tensor) -> torch.Tensor:
        return label_distance(diff, self.m["eq12_distance"], self._inv_std())

    @torch.no_grad()
    def label_batch(self, batch: dict, deployment: int) -> np.ndarray:
        """Eq. 9, on arrival of B(i), with the labeler trained on B(1..i-1); B(1) gets labels 1.
        U = 1 - clip(max_k ||s' - mu_k(s, a)||^2, 0, 1)  (label_reading=max_error, the default)
        U = max_k [1 - clip(||s' - mu_k(s, a)||^2, 0, 1)]  (label_reading=max_label, as typeset)
        ||.||^2 is the distance `musbo.eq9_distance` (label_distance). Records the labels'
        distribution (labels/eq9_*) and the exploration noise of the collection that produced the batch."""
        n = len(batch["obs"])
        self._record_exploration()
        if not self.labeler_ready:
            return np.ones(n, np.float32)
        out = []
        for i in range(0, n, 8192):
            sl = slice(i, i + 8192)
            mu = self.labeler.predict(batch["obs"][sl], batch["act"][sl]).next_obs        # [K, n, d]
            err = self.eq9_distance(torch.as_tensor(batch["next_obs"][sl], device=mu.device) - mu)  # [K, n]
            clipped = err.clamp(0.0, self.m["label_clip_max"])
            if self.m["label_reading"] == "max_error":
                out.append(1.0 - clipped.max(0).values)
            else:
                out.append((1.0 - clipped).max(0).values)
        labels = torch.cat(out).cpu().numpy().astype(np.float32)
        self.scalars.distribution("labels", "eq9", labels, bounds=(0, 1))
        return labels

    def _record_exploration(self) -> None:
        """Eq. 22's noise over the collection that produced the arriving batch (deployments >= 2)."""
        explorer, self._explorer = self._explorer, None
        if explorer is not None and explorer.actions:
            self.scalars.add_many("exploration", explorer.summary())

    @torch.no_grad()
    def imagined_labels(self, obs: torch.Tensor, act: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Eq. 12: U(s, a) = exp(-alpha d(mu_k(s, a), mu_l(s, a))), k != l drawn per sample, d =
        `musbo.eq12_distance`. All K members in one batched call, then the pair gathered: at TRPO's
        50-200 rows per step it was as fast or faster than computing two members per sample
        (bench/label_readings.py --eq12-timing; docs/paper_to_code.md).
        alpha: `musbo.alpha` (musbo.eq12_alpha=paper), or, when `self.eq12_alpha` is None
        (calibrated, first call of a deployment), ln 2 / the median distance of this batch, so its
        median label is 0.5; kept for the rest of the deployment and recorded (policy/eq12_alpha)."""
        mu = self.labeler.predict(obs, act).next_obs                                       # [K, N, d]
        K, N = mu.shape[0], mu.shape[1]
        gen_device = generator.device
        k = torch.randint(K, (N,), generator=generator, device=gen_device)
        l = (k + torch.randint(1, K, (N,), generator=generator, device=gen_device)) % K   # l != k
        rows = torch.arange(N, device=mu.device)
        diff = mu[k.to(mu.device), rows] - mu[l.to(mu.device), rows]
        distance = self.eq12_distance(diff)
        if self.eq12_alpha is None:
            self.eq12_alpha = calibrated_alpha(distance)
            self.scalars.add("policy", "eq12_alpha", self.eq12_alpha)
        return torch.exp(-self.eq12_alpha * distance)

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
            fit_ensemble(self.labeler, dataset, cfg["labeler"], gen, self.stopping("labeler"),
                         scalars=self.scalars, phase="labeler")
            self.labeler_ready = True
        _, gen = rngs(seed, "dynamics", deployment, device=self.device)
        with timer("model"):
            # Eq. 8: M-hat-theta, N deterministic members, L2 loss on D_all.
            if not self.m["warm_start"]:
                self.dynamics = make_ensemble(cfg["dynamics"], self.obs_dim, self.act_dim, self.device, False)
            fit_ensemble(self.dynamics, dataset, cfg["dynamics"], gen, self.stopping("dynamics"),
                         weight_decay=cfg["dynamics"]["weight_decay"], scalars=self.scalars)
        _, gen = rngs(seed, "bc", deployment, device=self.device)
        with timer("bc"):
            # Eq. 11: pi_init = argmin (1/|D|) sum 1/2 U(s, a) ||a - pi(s)||^2 (U kept from arrival).
            handoff = handoff_of(self.policy, dataset.newest()["obs"], deployment)
            if self.m["reinit_policy"]:
                self.policy = make_policy(cfg, self.obs_dim, self.act_dim, self.device)
            # "same split and early stop" as eq. 8: the last 15 % of each batch, patience 3
            train, holdout = dataset.split(cfg["bc"]["holdout_split"], cfg["bc"]["holdout"], gen)
            clone_policy(self.policy, train, cfg, gen, all_obs=data["obs"], weighted=weighted, holdout=holdout,
                         early_stopping=True, scalars=self.scalars, handoff=handoff)
        _, gen = rngs(seed, "trpo", deployment, device=self.device)
        if self.m["eq12_alpha"] == "calibrated":
            self.eq12_alpha = None  # set by the first imagined batch of this deployment's TRPO
        with timer("policy"):
            # Eqs. 12-13: TRPO on imagined rollouts, each sample's advantage weighted by eq. 12.
            label_fn = (lambda s, a: self.imagined_labels(s, a, gen)) if weighted else None
            train_in_model(self.policy, self.dynamics, dataset.start_states(cfg["start_states"]),
                           prediction_box(cfg["trpo"]["clip_predictions"], data), cfg, self.m["member_choice"], gen,
                           label_fn, scalars=self.scalars, reward_velocity_from=self.reward_velocity_from)

    def stopping(self, section: str):
        """Appendix F: validated every epoch, stop after `patience` (3) epochs without improvement;
        the rest as BREMEN's code (each member on its own, `keep` = last weights, <= max_epochs)."""
        c = self.cfg[section]
        return Patience(c["patience"], max_epochs=c["max_epochs"], keep=c["keep"])

    # ------------------------------------------------------------------ acting
    def collection_policy(self, deployment: int):
        """Deployment 1: uniform random (None). Later: the exploration policy of eq. 22."""
        if deployment == 1:
            return None
        self._explorer = ExplorationPolicy(self, stream_seed(self.seed, "explore", deployment))
        return self._explorer

    def eval_policy(self):
        return self.policy.numpy_policy("deterministic")

    def dynamics_model(self) -> DynamicsEnsemble:
        return self.dynamics

    def state_dict(self) -> dict:
        return {"dynamics": self.dynamics.state_dict(), "labeler": self.labeler.state_dict(),
                "policy": self.policy.state_dict(), "labeler_ready": self.labeler_ready,
                "eq12_alpha": self.eq12_alpha}

    def load_state_dict(self, state: dict) -> None:
        self.dynamics.load_state_dict(state["dynamics"])
        self.labeler.load_state_dict(state["labeler"])
        self.policy.load_state_dict(state["policy"])
        self.labeler_ready = bool(state["labeler_ready"])
        self.eq12_alpha = state.get("eq12_alpha", self.eq12_alpha)  # absent in checkpoints before the key


class ExplorationPolicy:
    """Eq. 22: a = tanh(mu(s)) + eps_c + eps_u, eps_c ~ N(0, sigma_c^2), eps_u ~ N(0, s_u^2), where
    q = U(a', s) (exploration_noise=eq22) or 1 - U(a', s) (one_minus_u), and s_u = q
    (eq22_reading=sigma, eq. 22 as typeset) or sqrt(q) (variance: the text's "variance equal to U");
    a' = tanh(mu(s)) + eps_c and U from eq. 12 (no true s' exists before acting).
    exploration_noise=none drops eps_u and keeps eps_c (the ablation isolates the uncertainty term).

    It acts on numpy snapshots of the policy and of the labeler (the collector calls it once
    per env step with one state, where torch's per-call overhead would dominate); `labels`
    is eq. 12 as MUSBO.imagined_labels computes it, with the pair k != l drawn from numpy.
    It accumulates the noise std s_u and the share of actions outside [-1, 1] (the env clips
    them) for `summary()`, which MUSBO records when the batch arrives."""

    def __init__(self, algo: MUSBO, seed: int):
        self.mode, self.act_dim = algo.m["exploration_noise"], algo.act_dim
        self.reading = algo.m["eq22_reading"]
        self.sigma_c, self.alpha = algo.m["exploration_const_std"], algo.eq12_alpha  # the last TRPO's alpha
        self.mean = algo.policy.numpy_policy("deterministic", clip=False)
        self.labeler_means = algo.labeler.numpy_next_obs_means()
        self.members = algo.labeler.members
        self.distance = algo.m["eq12_distance"]
        self.inv_std = algo._inv_std().cpu().numpy().astype(np.float64)
        self.rng = np.random.default_rng(seed)
        self.actions = self.clipped = 0          # action entries drawn, of which outside [-1, 1]
        self.noise_std_sum = 0.0                 # sum of s_u over the states acted on
        self.states = 0

    def labels(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        """Eq. 12: U(s, a) = exp(-alpha d(mu_k(s, a), mu_l(s, a))), k != l drawn per sample."""
        mu = self.labeler_means(obs, act)                                      # [K, n, d]
        n = mu.shape[1]
        k = self.rng.integers(self.members, size=n)
        l = (k + self.rng.integers(1, self.members, size=n)) % self.members  # l != k
        diff = mu[k, np.arange(n)] - mu[l, np.arange(n)]
        return np.exp(-self.alpha * label_distance(diff, self.distance, self.inv_std))

    def noise_std(self, u: np.ndarray) -> np.ndarray:
        """s_u of eq. 22 for labels u."""
        q = u if self.mode == "eq22" else 1.0 - u
        return q if self.reading == "sigma" else np.sqrt(q)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        a_prime = self.mean(obs) + self.rng.normal(0.0, self.sigma_c, size=(len(obs), self.act_dim))
        if self.mode == "none":
            action = a_prime
        else:
            std = self.noise_std(self.labels(obs, np.clip(a_prime, -1, 1)))
            action = a_prime + self.rng.normal(size=a_prime.shape) * std[:, None]
            self.noise_std_sum += float(std.sum())
        self.states += len(obs)
        self.actions += action.size
        self.clipped += int(np.count_nonzero(np.abs(action) > 1.0))
        return action.astype(np.float32)

    def summary(self) -> dict:
        """eq22_noise_std_mean: the mean s_u (0 under exploration_noise=none); eq22_clipped_share:
        the share of action entries outside [-1, 1]."""
        return {"eq22_noise_std_mean": self.noise_std_sum / max(self.states, 1),
                "eq22_clipped_share": self.clipped / max(self.actions, 1)}


def calibrated_alpha(distance: torch.Tensor) -> float:
    """alpha = ln 2 / median distance: the median of exp(-alpha d) is then 0.5. The paper's 0.028
    presumes units of d that it never states (musbo.eq12_alpha=calibrated)."""
    median = float(distance.median())
    if not 0.0 < median < math.inf:
        raise RuntimeError(f"eq. 12 calibration: the median distance of the first imagined batch is {median}, so no "
                           "alpha gives a median label of 0.5 (the labeler's members agree exactly); run with "
                           "musbo.eq12_alpha=paper")
    return math.log(2.0) / median


def label_distance(diff, reading: str, inv_std=None):
    """The distance of eqs. 9 and 12 between a prediction and a target (diff [..., d], numpy or torch):
    raw      sum_j diff_j^2                    (as written: raw state units, summed over dims)
    std_sum  sum_j (diff_j / std_j)^2          (per-dimension standardised, summed)
    std_mean (1/d) sum_j (diff_j / std_j)^2    (standardised, averaged over dims)
    std_j: the labeler's target std (MUSBO._inv_std gives 1 / std_j)."""
    if reading == "raw":
        return (diff * diff).sum(-1)
    if reading not in ("std_sum", "std_mean"):
        raise ValueError(f"distance reading {reading!r} is not valid; choose raw, std_sum or std_mean")
    z = diff * inv_std
    return (z * z).sum(-1) if reading == "std_sum" else (z * z).mean(-1)
