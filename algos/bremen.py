"""BREMEN (Matsushima et al., ICLR 2021) on the shared core, on the MUSBO grid.

One deployment: warm-start the dynamics ensemble on D_all, re-initialise the policy and clone
the NEWEST batch only, run TRPO in the ensemble (one member per step, KL bound to the previous
iterate, linear baseline), deploy mean + N(0, 0.1^2). Facts from ../shared/spec/BASELINES.md."""
from __future__ import annotations

from algos.core.ensemble import DynamicsEnsemble
from algos.core.bc import clone_policy, handoff_of
from algos.core.model_trpo import make_policy, prediction_box, train_in_model
from algos.core.scalars import Scalars
from algos.core.seeding import rngs, stream_seed
from algos.core.training import StoppingRule, fit_ensemble, make_ensemble


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
            # Deterministic ensemble, MSE + L2 of the hidden kernels / N_train, warm-started across
            # deployments; validated every 5 epochs on the last 15 % of each batch, a member stops 20
            # epochs after its best and keeps its last weights (model/dynamics.py:189-214).
            if not self.b["warm_start"]:
                self.dynamics = make_ensemble(cfg["dynamics"], self.obs_dim, self.act_dim, self.device, False)
            l2 = "per_train_sample" if self.b["dynamics_l2"] == "per_train_sample" else self.b["dynamics_weight_decay"]
            fit_ensemble(self.dynamics, dataset, cfg["dynamics"], gen, self.model_stopping(), weight_decay=l2,
                         scalars=self.scalars)
        _, gen = rngs(seed, "bc", deployment, device=self.device)
        with timer("bc"):
            # Behaviour cloning of the newest batch B(i) only, from fresh weights (no weights: plain BC):
            # bc.steps Adam steps, no holdout; the normaliser from every batch cloned so far (= D_all).
            handoff = handoff_of(self.policy, dataset.newest()["obs"], deployment)
            if self.b["reinit_policy"]:
                self.policy = make_policy(cfg, self.obs_dim, self.act_dim, self.device)
            newest = self.b["bc_newest_batch_only"]
            if self.b["bc_early_stopping"]:  # switch: the project's old BC (holdout, patience)
                train, holdout = dataset.split(cfg["bc"]["holdout_split"], cfg["bc"]["holdout"], gen, newest_only=newest)
            else:
                train, holdout = (dataset.newest() if newest else data), None
            clone_policy(self.policy, train, cfg, gen, all_obs=data["obs"], holdout=holdout,
                         early_stopping=self.b["bc_early_stopping"], scalars=self.scalars,
                         handoff=handoff)
        _, gen = rngs(seed, "trpo", deployment, device=self.device)
        with timer("policy"):
            # Plain TRPO in the model (label_fn=None), starting from the cloned policy; the model
            # reward reads x-velocity as BREMEN's reward functions do (bremen.model_reward_velocity_from).
            train_in_model(self.policy, self.dynamics, dataset.start_states(cfg["start_states"]),
                           prediction_box(cfg["trpo"]["clip_predictions"], data), cfg, self.b["member_choice"], gen,
                           scalars=self.scalars, reward_velocity_from=self.reward_velocity_from)

    @property
    def reward_velocity_from(self) -> str:
        """The state TRPO's model reward reads x-velocity from (envs/model_side.py: VELOCITY_FROM)."""
        return self.b["model_reward_velocity_from"]

    def model_stopping(self) -> StoppingRule:
        """BREMEN's dynamics fit (model/dynamics.py:195-214): up to 200 epochs, validated every 5,
        each member stops 20 epochs after its best and keeps its last weights."""
        b = self.b
        return StoppingRule(patience=b["model_patience"], validate_every=b["model_validate_every"],
                            max_epochs=b["model_max_epochs"], keep="last", per_member=True)

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
