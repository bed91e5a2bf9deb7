"""MOPO (Yu et al., NeurIPS 2020) adapted to deployments (spec/BASELINES.md, "MOPO").

After deployment i, MOPO is trained offline on D_all = B(1..i) and its latest SAC policy,
sampling from its stochastic actions, collects B(i+1). One deployment (`MOPO.train`) is one
run of MOPO's Algorithm 2 on D_all:
  l.1     fit an ensemble of N probabilistic models N(mu_i, Sigma_i) of [delta s, r] on D_env;
  l.3-10  every `rollout_every` SAC steps: from `rollout_batch` start states of D_env, roll
          the policy out for h steps in a random elite per transition, with the penalised
          reward r~ = r^ - lambda u(s, a), into D_model;
  l.11    SAC on batches drawn from D_env (real_ratio) and D_model (the rest).
Numbers follow MOPO's official code where it differs from its paper (the penalty's norm);
every number is a key of cfg["mopo"] (config/paper.yaml, run.defaults.mopo).

Why not algos.core.rollouts.imagine: MOPO's rollouts use the model's *learned* reward (not the
appendix-F model reward), *sample* (s', r) from the chosen elite's Gaussian, and need every
member's sigma at (s, a) for the penalty, so one step is one all-member prediction
(`penalised_model_step`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

import envs
from algos.core import preempt
from algos.core.dataset import DeploymentDataset
from algos.core.ensemble import DynamicsEnsemble, Prediction
from algos.core.sac import SAC, ReplayBuffer, TanhGaussianActor, mixed_batch
from algos.core.scalars import Scalars
from algos.core.seeding import rngs, seed_globals, stream_seed
from algos.core.training import ModelTrainer, StoppingRule

PENALTIES = ("max_std_norm", "frobenius")


def uncertainty_penalty(std: torch.Tensor, kind: str) -> torch.Tensor:
    """u(s, a) from every member's predicted std of [delta s, r], std [M, N, D] -> [N].

    max_std_norm: max_i ||sigma_i(s, a)||_2, MOPO's code (`penalty_learned_var`); sigma in raw
        units of the targets, reward included, as the code's `ensemble_model_stds`.
    frobenius:    max_i ||Sigma_i(s, a)||_F, the paper's form. Sigma_i = diag(sigma_i^2) is
        diagonal, and the Frobenius norm of a diagonal matrix is the 2-norm of its diagonal:
        ||Sigma_i||_F = sqrt(sum_j sigma_ij^4) = ||sigma_i^2||_2 (variance units, so it weighs
        large uncertainties more and small ones less than the code's form).
    """
    if kind == "max_std_norm":
        per_member = torch.linalg.vector_norm(std, dim=-1)
    elif kind == "frobenius":
        per_member = torch.linalg.vector_norm(std.square(), dim=-1)
    else:
        raise ValueError(f"mopo.penalty must be one of {PENALTIES}, got {kind!r}")
    return per_member.amax(dim=0)  # the max over ALL members, elites or not


def penalised_model_step(pred: Prediction, elites: torch.Tensor, penalty: str, penalty_lambda: float,
                         generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """One imagined transition per row from an all-member prediction (Alg. 2 l.8-9).

    The (s', r) come from a random elite per transition, sampled from its Gaussian
    (mean + sigma * eps, as MOPO's FakeEnv.step); the penalty looks at every member.
    Returns next_obs [N, d], reward (penalised) [N], raw_reward [N], penalty [N], member [N]."""
    mean = torch.cat([pred.next_obs, pred.reward.unsqueeze(-1)], dim=-1)       # [M, N, d+1]
    std = torch.cat([pred.next_obs_std, pred.reward_std.unsqueeze(-1)], dim=-1)
    n = mean.shape[1]
    gen_device = generator.device if generator is not None else torch.device("cpu")
    pick = torch.randint(len(elites), (n,), generator=generator, device=gen_device)
    member = elites.to(gen_device)[pick].to(mean.device)
    rows = torch.arange(n, device=mean.device)
    eps = torch.randn((n, mean.shape[-1]), generator=generator, device=gen_device).to(mean.device)
    sample = mean[member, rows] + std[member, rows] * eps
    u = uncertainty_penalty(std, penalty)
    raw_reward = sample[:, -1]
    return {"next_obs": sample[:, :-1], "reward": raw_reward - penalty_lambda * u,  # r~ = r^ - lambda u
            "raw_reward": raw_reward, "penalty": u, "member": member}


@torch.no_grad()
def model_rollout(model: DynamicsEnsemble, actor: TanhGaussianActor, start_obs: torch.Tensor, horizon: int,
                  termination_fn: Callable, penalty: str, penalty_lambda: float,
                  generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """h steps of the stochastic policy in the model from start_obs [N, d] (Alg. 2 l.4-10).
    A rollout that reaches a terminal state (termination_fn(s, a, s')) stores that transition
    with terminated = 1 and stops; the others go on. Returns the flat transitions [n, ...]
    (n <= N h) and each one's penalty u(s, a)."""
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("obs", "act", "rew", "next_obs", "terminated", "penalty")}
    obs = start_obs
    for _ in range(horizon):
        act = actor.sample(obs, generator)[0]                        # l.7: a ~ pi(s)
        step = penalised_model_step(model.predict(obs, act), model.elites, penalty, penalty_lambda, generator)
        terminated = termination_fn(obs, act, step["next_obs"]).reshape(-1).bool()
        for key, value in (("obs", obs), ("act", act), ("rew", step["reward"]), ("next_obs", step["next_obs"]),
                           ("terminated", terminated), ("penalty", step["penalty"])):
            out[key].append(value)                                   # l.10: add to D_model
        obs = step["next_obs"][~terminated]
        if obs.shape[0] == 0:
            break
    return {k: torch.cat(v) for k, v in out.items()}


class MOPO:
    """The algorithm interface of docs/ARCHITECTURE.md for MOPO."""

    def __init__(self, env_name: str, cfg: dict, obs_dim: int, act_dim: int, device, seed: int):
        self.env_name, self.cfg, self.m = env_name, cfg, cfg["mopo"]
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.device, self.seed = torch.device(device), int(seed)
        self.model = self._new_model("init")
        self.sac = self._new_sac("init")
        self.stats: dict = {}
        self.scalars = Scalars()  # diagnostics; the run hands in a file-backed one

    # ---- construction ----------------------------------------------------------------------
    def _new_model(self, *stream) -> DynamicsEnsemble:
        m = self.m
        seed_globals(self.seed, "mopo", "model", *stream)  # the ensemble's init draws from torch's global RNG
        return DynamicsEnsemble(
            self.obs_dim, self.act_dim, members=m["members"], hidden=m["hidden"], probabilistic=True,
            activation="swish", reward_target=True,                 # [M]: 4 x 200 swish, predicts [delta s, r]
            learn_logvar_bounds=True, logvar_max_init=m["logvar_max_init"],
            logvar_min_init=m["logvar_min_init"],
            standardize_targets=m["target_space"] == "standardized").to(self.device)  # [M code]: raw targets

    def model_stopping(self) -> StoppingRule:
        """MOPO's bnn.py:309-331: validated every epoch, stop once more than 5 epochs (patience 6)
        pass without a 1 % improvement of any member, each member's best weights restored
        (:478); no epoch cap (max_epochs 0)."""
        m = self.m
        return StoppingRule(patience=m["patience"], max_epochs=m["max_epochs"] or None,
                            min_improvement=m["improvement_threshold"], keep="best")

    def _new_sac(self, *stream) -> SAC:
        m = self.m
        target_entropy = -self.act_dim if m["target_entropy"] == "minus_act_dim" else float(m["target_entropy"])
        _, gen = rngs(self.seed, "mopo", "sac", *stream, device=self.device)
        return SAC(self.obs_dim, self.act_dim, hidden=m["sac_hidden"], lr=m["sac_lr"], tau=m["sac_tau"],
                   gamma=self.cfg["gamma"], batch_size=m["sac_batch_size"], target_entropy=target_entropy,
                   device=self.device, generator=gen)

    def model_buffer_capacity(self) -> int:
        """model_retain_epochs epochs of rollouts. MOPO's code keeps
        retain_epochs * h * rollout_batch * (epoch_length / model_train_freq) transitions, and its
        epoch_length equals model_train_freq (1000), i.e. one rollout per epoch: so this is
        model_retain_epochs rollouts' worth."""
        m = self.m
        return int(m["model_retain_epochs"] * m["horizon"] * m["rollout_batch"])

    # ---- the algorithm interface -----------------------------------------------------------
    def collection_policy(self, deployment: int):
        """Deployment 1: uniform random (None). Later: MOPO's latest policy, sampling its actions."""
        if deployment == 1:
            return None
        return self.sac.numpy_policy(deterministic=False, seed=stream_seed(self.seed, "mopo", "collect", deployment))

    def train(self, dataset: DeploymentDataset, deployment: int, timer) -> dict:
        """Everything between deployment i and i+1: MOPO's Algorithm 2 on D_all."""
        m = self.m
        if not m["warm_start"] and deployment > 1:  # switch: retrain model and agent from scratch
            self.model = self._new_model("scratch", deployment)
            self.sac = self._new_sac("scratch", deployment)
        data = dataset.all()

        with timer("model"):  # l.1: the probabilistic ensemble on D_env, 5 elites by holdout MSE
            _, model_gen = rngs(self.seed, "mopo", "model_fit", deployment, device=self.device)
            # holdout: a random min(20 %, 1000) of D_env, redrawn at every fit (bnn.py:394-397)
            train, holdout = dataset.split("random", m["holdout_fraction"], model_gen, holdout_max=m["holdout_max"])
            trainer = ModelTrainer(lr=m["lr"], batch_size=m["batch_size"], weight_decay=m["weight_decay"],
                                   bound_penalty=m["logvar_bound_penalty"], bootstrap=m["bootstrap"])
            fit = trainer.fit(self.model, train, holdout, self.model_stopping(), model_gen, scalars=self.scalars,
                              phase="mopo_model", n_elites=m["elites"])

        with timer("policy"):  # l.2-11: SAC on D_env u D_model
            _, gen = rngs(self.seed, "mopo", "policy", deployment, device=self.device)
            self.sac.generator = gen
            real = ReplayBuffer.from_arrays(data, self.device)                    # D_env = D_all
            starts = torch.as_tensor(dataset.start_states(self.m["start_states"]), device=self.device)
            model_data = ReplayBuffer(self.model_buffer_capacity(), self.obs_dim, self.act_dim, self.device)
            termination = lambda s, a, s2: envs.mopo_termination(self.env_name, s, a, s2)  # noqa: E731
            penalties, lengths, losses = [], [], {}
            interval, interval_steps = {}, 0

            def progress(step: int) -> dict:  # what the loop needs to go on at `step`
                return {"step": step, "penalties": list(penalties), "lengths": list(lengths), "losses": dict(losses),
                        "interval": dict(interval), "interval_steps": interval_steps,
                        "model_data": model_data.state_dict()}
            loop = preempt.loop("sac", "step", gen)  # a stop saves the step (algos/core/preempt.py)
            saved = loop.result if loop.finished else loop.saved
            if saved is not None:
                penalties, lengths, losses = saved["penalties"], saved["lengths"], saved["losses"]
                interval, interval_steps = saved["interval"], saved["interval_steps"]
                model_data.load_state_dict(saved["model_data"])
            for step in range(0 if saved is None else saved["step"], m["sac_steps"]):
                loop.poll(step, lambda: progress(step))
                if step % m["rollout_every"] == 0:  # l.4-5: b start states drawn from D_env
                    pick = torch.randint(len(starts), (m["rollout_batch"],), generator=gen, device=gen.device)
                    rollout = model_rollout(self.model, self.sac.actor, starts[pick.to(self.device)], m["horizon"],
                                            termination, m["penalty"], m["penalty_lambda"], gen)
                    model_data.add(rollout)
                    penalty = rollout["penalty"]
                    penalties.append(float(penalty.mean()))
                    lengths.append(len(rollout["obs"]) / m["rollout_batch"])
                    self.scalars.add_many("mopo_rollout", {"penalty_mean": penalties[-1],
                                                           "penalty_max": float(penalty.max()),
                                                           # r-hat before the penalty (rew = r-hat - lambda u)
                                                           "model_reward_mean": float(rollout["rew"].mean())
                                                           + m["penalty_lambda"] * penalties[-1],
                                                           "rollout_length": lengths[-1]}, step)
                    if interval:  # SAC's losses and alpha averaged over the previous interval
                        self.scalars.add_many("sac", {k: v / interval_steps for k, v in interval.items()}, step)
                    interval, interval_steps = {}, 0
                # l.11: real_ratio of the batch from D_env, the rest from D_model
                losses = self.sac.update(mixed_batch(real, model_data, m["sac_batch_size"], m["real_ratio"], gen))
                for k, v in losses.items():
                    interval[k] = interval.get(k, 0.0) + v
                interval_steps += 1
            if interval:
                self.scalars.add_many("sac", {k: v / interval_steps for k, v in interval.items()}, m["sac_steps"])
            interval, interval_steps = {}, 0
            loop.done(progress(m["sac_steps"]))

        self.stats = {"model_epochs": fit["epochs"], "model_best_val": fit["best_val"], "elites": fit["elites"],
                      "mean_penalty": float(np.mean(penalties)) if penalties else float("nan"),
                      "mean_rollout_length": float(np.mean(lengths)) if lengths else float("nan"),
                      **{f"sac_{k}": v for k, v in losses.items()}}
        return self.stats

    def eval_policy(self):
        """The deterministic policy: tanh of the Gaussian mean."""
        return self.sac.numpy_policy(deterministic=True)

    def dynamics_model(self) -> DynamicsEnsemble:
        return self.model

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "sac": self.sac.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        # the ensemble's `elites` buffer shrinks from all members to n_elites at fit(): give the
        # fresh model the saved one's shape first, or load_state_dict reports a size mismatch
        self.model.elites = d["model"]["elites"].clone().to(self.model.elites.device)
        self.model.load_state_dict(d["model"])
        self.sac.load_state_dict(d["sac"])
