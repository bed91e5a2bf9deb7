"""Soft actor-critic (Haarnoja et al. 2018, with the learned temperature of Haarnoja et al.
2018b), in the form MOPO's code runs it (softlearning, TF1): a tanh-squashed Gaussian policy,
twin Q networks with Polyak-averaged target copies, and a temperature alpha learned against a
target entropy. This module only sees batches of tensors; which data it sees (real, model or
a mix) is the caller's business (algos/mopo.py).

One update follows softlearning's single `session.run` of the Q, policy and alpha train ops:
all three losses are computed from the parameters *before* the step, then all parameters
step together, then the targets move by tau. That lets the three losses share one backward
pass: the policy loss reads the twin Q through detached weights, so its gradient reaches the
actor only (through the action), and the critic gets gradient from the Bellman loss only.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from algos.core.ensemble import EnsembleLinear

# softlearning's GaussianPolicy clips the log-std of the pre-tanh Gaussian to this range.
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


# How the networks start (SAC(init=...)): "glorot", softlearning's Keras Dense default (MOPO's
# code; the default), or "torch_default", nn.Linear's own (Stable-Baselines3's). And the tanh
# log-determinant (SAC(log_det=...)): "exact", log(1 - tanh(u)^2) in its stable form
# (softlearning's bijector; the default), or "sb3_epsilon", log(1 - tanh(u)^2 + 1e-6) (SB3's),
# which caps the penalty on saturated actions at log(1e-6). Both exist for the calibration
# against SB3 (bench/calibrate.py); MOPO runs the defaults.
INITS = ("glorot", "torch_default")
LOG_DETS = ("exact", "sb3_epsilon")


def _init_(weight: torch.Tensor, bias: torch.Tensor, fan_in: int, fan_out: int, init: str,
           generator: torch.Generator | None) -> None:
    """glorot: Glorot-uniform weights, zero biases; torch_default: weights and biases
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the distribution of nn.Linear.reset_parameters."""
    if init == "glorot":
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        nn.init.uniform_(weight, -bound, bound, generator=generator)
        bias.zero_()
    elif init == "torch_default":
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(weight, -bound, bound, generator=generator)
        nn.init.uniform_(bias, -bound, bound, generator=generator)
    else:
        raise ValueError(f"SAC init must be one of {INITS}, got {init!r}")


class TanhGaussianActor(nn.Module):
    """pi(a|s): u ~ N(mu(s), sigma(s)^2), a = tanh(u); one MLP head gives [mu, log sigma]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], generator: torch.Generator | None = None,
                 init: str = "glorot", log_det: str = "exact"):
        super().__init__()
        if log_det not in LOG_DETS:
            raise ValueError(f"SAC log_det must be one of {LOG_DETS}, got {log_det!r}")
        sizes = [obs_dim, *hidden, 2 * act_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes[:-1], sizes[1:]))
        with torch.no_grad():
            for layer in self.layers:
                _init_(layer.weight, layer.bias, layer.in_features, layer.out_features, init, generator)
        self.act_dim, self.log_det = act_dim, log_det

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = obs
        for layer in self.layers[:-1]:
            h = F.relu(layer(h))
        mean, log_std = self.layers[-1](h).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def mean_action(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self(obs)[0])

    def sample(self, obs: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised a = tanh(mu + sigma * eps) and log pi(a|s) with the tanh Jacobian."""
        mean, log_std = self(obs)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        u = mean + log_std.exp() * eps
        log_prob_u = (-0.5 * eps.pow(2) - log_std - _HALF_LOG_2PI).sum(-1)
        a = torch.tanh(u)
        if self.log_det == "exact":  # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|
            log_det = (2.0 * (_LOG_2 - u - F.softplus(-2.0 * u))).sum(-1)
        else:
            log_det = torch.log(1.0 - a.pow(2) + 1e-6).sum(-1)
        return a, log_prob_u - log_det


class TwinQ(nn.Module):
    """Both Q networks as one ensemble MLP (the core's `EnsembleLinear`, weights [2, in, out]),
    so one batched matmul per layer serves both."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], members: int = 2,
                 generator: torch.Generator | None = None, init: str = "glorot"):
        super().__init__()
        sizes = [obs_dim + act_dim, *hidden, 1]
        self.layers = nn.ModuleList(EnsembleLinear(members, i, o) for i, o in zip(sizes[:-1], sizes[1:]))
        with torch.no_grad():
            for layer in self.layers:
                _init_(layer.weight, layer.bias, layer.in_dim, layer.out_dim, init, generator)
        self.members = members

    def forward(self, obs: torch.Tensor, act: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        """Q_i(s, a) for every member: [members, N]. `detach_params` lets a loss differentiate
        through the input action without touching the critic's weights (the policy loss)."""
        x = torch.cat([obs, act], dim=-1)
        h = x.unsqueeze(0).expand(self.members, *x.shape)
        last = len(self.layers) - 1
        for k, layer in enumerate(self.layers):
            if detach_params:
                h = torch.baddbmm(layer.bias.detach(), h, layer.weight.detach())
            else:
                h = layer(h)
            if k < last:
                h = F.relu(h)
        return h.squeeze(-1)


class SAC:
    """The agent: `update(batch)` is one gradient step; `numpy_policy` hands the collector and
    the evaluator a frozen copy of the actor."""

    def __init__(self, obs_dim: int, act_dim: int, *, hidden: Sequence[int], lr: float, tau: float,
                 gamma: float, batch_size: int, target_entropy: float, device: torch.device | str = "cpu",
                 generator: torch.Generator | None = None, init: str = "glorot", log_det: str = "exact"):
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.hidden = list(hidden)
        self.tau, self.gamma, self.batch_size = float(tau), float(gamma), int(batch_size)
        self.target_entropy = float(target_entropy)
        self.device = torch.device(device)
        # Sampling noise of the updates; a caller may swap it per phase (seeding.rngs).
        self.generator = generator
        init_gen = None
        if generator is not None:  # parameter init drawn from the caller's stream, on the cpu
            init_gen = torch.Generator().manual_seed(int(torch.randint(
                2**62, (1,), generator=generator, device=generator.device).item()))
        self.actor = TanhGaussianActor(obs_dim, act_dim, self.hidden, init_gen, init, log_det).to(self.device)
        self.critic = TwinQ(obs_dim, act_dim, self.hidden, generator=init_gen, init=init).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        # softlearning starts from log alpha = 0 (alpha = 1)
        self.log_alpha = torch.zeros((), device=self.device, requires_grad=True)
        # Policy, Q and alpha share MOPO's single lr, and Adam is per-parameter, so one Adam
        # over all three equals softlearning's three optimizers (and costs one step call);
        # the fused kernel where the device has one (faster on CPU too).
        params = [*self.actor.parameters(), *self.critic.parameters(), self.log_alpha]
        try:
            self.optimizer = torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, ValueError):
            self.optimizer = torch.optim.Adam(params, lr=lr, foreach=True)
        self.updates = 0

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    @torch.no_grad()
    def td_target(self, rew: torch.Tensor, next_obs: torch.Tensor, terminated: torch.Tensor) -> torch.Tensor:
        """y = r + gamma (1 - d) (min_i Q'_i(s', a') - alpha log pi(a'|s')), a' ~ pi(s'): the
        Bellman target with the twin-Q minimum of the target networks (clipped double Q)."""
        alpha = self.log_alpha.exp()
        next_act, next_logp = self.actor.sample(next_obs, self.generator)
        next_q = self.critic_target(next_obs, next_act).min(dim=0).values
        not_done = 1.0 - terminated.reshape(-1).to(next_q.dtype)
        return rew.reshape(-1).to(next_q.dtype) + self.gamma * not_done * (next_q - alpha * next_logp)

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The three SAC losses from the current parameters (softlearning's single graph)."""
        obs, act = batch["obs"], batch["act"]
        alpha = self.log_alpha.detach().exp()
        target = self.td_target(batch["rew"], batch["next_obs"], batch["terminated"])
        q = self.critic(obs, act)
        q_loss = 0.5 * (q - target).pow(2).mean(dim=1).sum()  # 0.5 MSE per Q net, as softlearning
        # policy: E[alpha log pi(a|s) - min_i Q_i(s, a)], a ~ pi reparameterised; the critic's
        # weights are detached here, so this gradient reaches the actor only
        pi_act, logp = self.actor.sample(obs, self.generator)
        q_pi = self.critic(obs, pi_act, detach_params=True).min(dim=0).values
        policy_loss = (alpha * logp - q_pi).mean()
        # temperature: alpha falls while the entropy -log pi exceeds the target, rises below it
        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        return {"q_loss": q_loss, "policy_loss": policy_loss, "alpha_loss": alpha_loss,
                "q_mean": q.detach().mean(), "entropy": -logp.detach().mean()}

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One SAC gradient step on a batch of obs, act, rew, next_obs, terminated: all three
        losses from the pre-step parameters, one backward, one Adam step, then Polyak."""
        alpha = self.alpha
        losses = self.losses(batch)
        values = dict(zip(losses, torch.stack(list(losses.values())).tolist()))  # one host sync
        if not all(math.isfinite(v) for v in values.values()):
            raise FloatingPointError(
                f"SAC update {self.updates}: non-finite loss in phase=policy ({values}); "
                "check the batch (model rollouts) for NaN/inf or exploding rewards")
        self.step(losses)
        return {**values, "alpha": alpha}

    def step(self, losses: dict[str, torch.Tensor]) -> None:
        """The step of `update` from its losses, nothing read back: one backward, Adam, Polyak."""
        self.optimizer.zero_grad(set_to_none=True)
        (losses["q_loss"] + losses["policy_loss"] + losses["alpha_loss"]).backward()
        self.optimizer.step()
        self.soft_update_targets()
        self.updates += 1

    @torch.no_grad()
    def soft_update_targets(self) -> None:
        """Polyak averaging: theta_target <- (1 - tau) theta_target + tau theta."""
        for p_target, p in zip(self.critic_target.parameters(), self.critic.parameters()):
            p_target.lerp_(p, self.tau)

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool, generator: torch.Generator | None = None) -> np.ndarray:
        x = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.device)
        if deterministic:
            a = self.actor.mean_action(x)
        else:
            a = self.actor.sample(x, generator if generator is not None else self.generator)[0]
        return a.cpu().numpy()

    def numpy_policy(self, deterministic: bool, seed: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
        """obs [n, obs_dim] -> actions [n, act_dim] (float32 numpy): tanh(mu(s)) when
        deterministic, else tanh(mu + sigma * eps) with eps from numpy's generator for `seed`.
        It runs a numpy copy of the actor's weights: the collector calls it once per env step
        with one observation, where torch's per-call overhead costs more than the matmuls; and
        a copy is frozen, so later training does not change a policy already handed out."""
        layers = [(layer.weight.detach().cpu().numpy().T.copy(), layer.bias.detach().cpu().numpy().copy())
                  for layer in self.actor.layers]
        act_dim = self.act_dim
        rng = None if deterministic else np.random.default_rng(0 if seed is None else int(seed))

        def policy(obs: np.ndarray) -> np.ndarray:
            h = np.asarray(obs, dtype=np.float32)
            for w, b in layers[:-1]:
                h = np.maximum(h @ w + b, 0.0)
            w, b = layers[-1]
            out = h @ w + b
            mean = out[..., :act_dim]
            if deterministic:
                return np.tanh(mean)
            log_std = np.clip(out[..., act_dim:], LOG_STD_MIN, LOG_STD_MAX)
            return np.tanh(mean + np.exp(log_std) * rng.standard_normal(mean.shape, dtype=np.float32))

        return policy

    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "critic_target": self.critic_target.state_dict(),
                "log_alpha": self.log_alpha.detach().clone(),
                "optimizer": self.optimizer.state_dict(), "updates": int(self.updates)}

    def load_state_dict(self, d: dict) -> None:
        self.actor.load_state_dict(d["actor"])
        self.critic.load_state_dict(d["critic"])
        self.critic_target.load_state_dict(d["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(d["log_alpha"])
        self.optimizer.load_state_dict(d["optimizer"])
        self.updates = int(d["updates"])


TRANSITION_KEYS = ("obs", "act", "rew", "next_obs", "terminated")


class ReplayBuffer:
    """A FIFO of transitions held as tensors on one device; when full, the oldest rows are
    overwritten (softlearning's SimpleReplayPool). `terminated` is stored as a float 0/1."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device | str = "cpu"):
        self.capacity = int(capacity)
        if self.capacity < 1:
            raise ValueError(f"replay buffer capacity must be positive, got {capacity}")
        dev = torch.device(device)
        self.data = {"obs": torch.empty(self.capacity, obs_dim, device=dev),
                     "act": torch.empty(self.capacity, act_dim, device=dev),
                     "rew": torch.empty(self.capacity, device=dev),
                     "next_obs": torch.empty(self.capacity, obs_dim, device=dev),
                     "terminated": torch.empty(self.capacity, device=dev)}
        self.size, self.cursor = 0, 0

    @classmethod
    def from_arrays(cls, arrays: dict, device: torch.device | str = "cpu") -> "ReplayBuffer":
        """A full buffer holding exactly these transitions (numpy or torch), e.g. D_all."""
        n, obs_dim = np.shape(arrays["obs"])
        buf = cls(n, obs_dim, np.shape(arrays["act"])[1], device)
        buf.add(arrays)
        return buf

    def __len__(self) -> int:
        return self.size

    def add(self, batch: dict) -> None:
        dev = self.data["obs"].device
        rows = {k: torch.as_tensor(np.asarray(batch[k]) if not torch.is_tensor(batch[k]) else batch[k],
                                   device=dev).to(torch.float32).reshape(-1, *self.data[k].shape[1:])
                for k in TRANSITION_KEYS}
        n = rows["obs"].shape[0]
        if n > self.capacity:  # only the newest `capacity` rows survive anyway
            rows = {k: v[n - self.capacity:] for k, v in rows.items()}
            n = self.capacity
        idx = (self.cursor + torch.arange(n, device=dev)) % self.capacity
        for k, v in rows.items():
            self.data[k][idx] = v
        self.cursor = (self.cursor + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def state_dict(self) -> dict:
        """The rows held (views, not copies) and the write position."""
        return {"rows": {k: v[:self.size] for k, v in self.data.items()}, "cursor": self.cursor}

    def load_state_dict(self, d: dict) -> None:
        n = len(d["rows"]["obs"])
        for k, v in self.data.items():
            v[:n] = d["rows"][k]
        self.size, self.cursor = n, int(d["cursor"])

    def sample(self, n: int, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """n rows drawn uniformly with replacement."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        gen_device = generator.device if generator is not None else torch.device("cpu")
        idx = torch.randint(self.size, (n,), generator=generator, device=gen_device).to(self.data["obs"].device)
        return {k: v[idx] for k, v in self.data.items()}


def mixed_batch(real: ReplayBuffer, model: ReplayBuffer, batch_size: int, real_ratio: float,
                generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """One SAC batch: int(batch_size * real_ratio) real rows, the rest model rows (as MBPO's
    and MOPO's code split it: env_batch_size = int(batch_size * real_ratio))."""
    n_real = int(batch_size * real_ratio)
    n_model = batch_size - n_real
    parts = [buf.sample(n, generator) for buf, n in ((real, n_real), (model, n_model)) if n > 0]
    if len(parts) == 1:
        return parts[0]
    return {k: torch.cat([p[k] for p in parts]) for k in TRANSITION_KEYS}
