"""BREMEN (Matsushima et al., ICLR 2021) on the shared core, on the MUSBO grid.

One deployment: warm-start the dynamics ensemble on D_all, re-initialise the policy and clone
the NEWEST batch only, run TRPO in the ensemble (one member per step, KL bound to the previous
iterate, linear baseline), deploy mean + N(0, 0.1^2). Facts from ../shared/spec/BASELINES.md."""
from __future__ import annotations

import numpy as np

from algos.core.ensemble import DynamicsEnsemble
from algos.core.model_trpo import (clone_policy, fit_ensemble, make_ensemble, make_policy, prediction_box,
                                   train_in_model)
from algos.core.scalars import Scalars
from algos.core.seeding import rngs, stream_seed


class BREMEN:
    def __init__(self, env_name: str, cfg: dict, obs_dim: int, act_dim: int, device, seed: int):
        self.env, self.cfg, self.device, self.seed = env_name, cfg, device, seed
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.b = cfg["bremen"]
        self.dynamics = make_ensemble(cfg["dynamics"], obs_dim, act_dim, device, probabilistic=False)
        self.policy = make_policy(cfg, obs_dim, act_dim, device)
        self.scalars = Scalars()  # diagnostics; the run hands in a file-backed one

    def train(self, dataset, deployment: int, timer) -> None:
        cfg, seed = self.cfg, self.seed
        data = dataset.all()
        _, gen = rngs(seed, "dynamics", deployment, device=self.device)
        with timer("model"):
            # Deterministic ensemble, MSE + small L2 penalty, warm-started across deployments.
            if not self.b["warm_start"]:
                self.dynamics = make_ensemble(cfg["dynamics"], self.obs_dim, self.act_dim, self.device, False)
            fit_ensemble(self.dynamics, data, cfg["dynamics"], gen, weight_decay=self.b["dynamics_weight_decay"])
        _, gen = rngs(seed, "bc", deployment, device=self.device)
        with timer("bc"):
            # Behaviour cloning of the newest batch B(i) only, from fresh weights (no weights: plain BC).
            if self.b["reinit_policy"]:
                self.policy = make_policy(cfg, self.obs_dim, self.act_dim, self.device)
            clone_data = dataset.newest() if self.b["bc_newest_batch_only"] else data
            clone_policy(self.policy, clone_data, np.ones(len(clone_data["obs"]), np.float32), cfg, gen)
        _, gen = rngs(seed, "trpo", deployment, device=self.device)
        with timer("policy"):
            # Plain TRPO in the model (label_fn=None), starting from the cloned policy.
            train_in_model(self.policy, self.dynamics, dataset.start_states(cfg["start_states"]),
                           prediction_box(cfg["trpo"]["clip_predictions"], data), cfg, self.b["member_choice"], gen)

    def collection_policy(self, deployment: int):
        """Deployment 1: uniform random; later a = mean(s) + N(0, 0.1^2)."""
        if deployment == 1:
            return None
        return self.policy.numpy_policy("fixed_std", std=self.b["exploration_std"],
                                        seed=stream_seed(self.seed, "explore", deployment))

    def eval_policy(self):
        return self.policy.numpy_policy("deterministic")

    def dynamics_model(self) -> DynamicsEnsemble:
        return self.dynamics

    def state_dict(self) -> dict:
        return {"dynamics": self.dynamics.state_dict(), "policy": self.policy.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.dynamics.load_state_dict(state["dynamics"])
        self.policy.load_state_dict(state["policy"])
