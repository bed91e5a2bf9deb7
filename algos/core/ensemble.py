"""Ensembles of MLPs as one batched layer, and the dynamics models built from them.

- `EnsembleLinear`: M linear layers in one tensor, weight [M, in, out], one `baddbmm` per call.
- `EnsembleMLP`: a stack of them; a deterministic head, or a Gaussian head (mean, log-variance)
  with soft log-variance bounds (MOPO's; learnable or fixed).
- `Normalizer`: mean / std standardisation, stored as buffers.
- `DynamicsEnsemble`: the models of the paper. M-hat-theta (eq. 8: deterministic, MSE), the
  labeler P-hat-phi (eq. 10: Gaussian NLL; its means serve eqs. 9 and 12) and MOPO's model
  (Gaussian, predicts [delta s, r], learnable bounds, elites). Inputs [s, a] are standardised
  with statistics of the training data; targets are the standardised state delta (and the
  standardised reward when `reward_target`), or raw ones (`standardize_targets=False`, MOPO).

The model only: algos/core/training.py trains it.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS = {"relu": F.relu, "swish": F.silu}


class EnsembleLinear(nn.Module):
    """M independent affine maps applied with one batched matmul: x [M, N, in] -> [M, N, out]."""

    def __init__(self, members: int, in_dim: int, out_dim: int):
        super().__init__()
        self.members, self.in_dim, self.out_dim = members, in_dim, out_dim
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default (kaiming_uniform with a=sqrt(5)) is U(-1/sqrt(in), 1/sqrt(in))
        # for both weight and bias; applied to each member.
        bound = 1.0 / math.sqrt(self.in_dim)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            self.bias.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor, members: slice | torch.Tensor | None = None) -> torch.Tensor:
        """`members` selects a subset of the weights (a slice or LongTensor over dim 0); x must have
        that many leading entries. Only the selected members are computed."""
        if members is None:
            return torch.baddbmm(self.bias, x, self.weight)
        if isinstance(members, torch.Tensor):  # index_select: ~2x faster than weight[members] on CPU
            return torch.baddbmm(self.bias.index_select(0, members), x, self.weight.index_select(0, members))
        return torch.baddbmm(self.bias[members], x, self.weight[members])

    def extra_repr(self) -> str:
        return f"members={self.members}, in_dim={self.in_dim}, out_dim={self.out_dim}"


def soft_clamp_logvar(raw: torch.Tensor, min_logvar: torch.Tensor, max_logvar: torch.Tensor) -> torch.Tensor:
    """MOPO's soft bounds: differentiable, monotone in raw, and inside [min, max + log(1 + e^(min-max))]
    for any raw value (the outer softplus may overshoot max by that tiny amount)."""
    logvar = max_logvar - F.softplus(max_logvar - raw)
    return min_logvar + F.softplus(logvar - min_logvar)


class EnsembleMLP(nn.Module):
    """M MLPs sharing a shape. Deterministic: forward -> [M, N, out]. Probabilistic: forward ->
    (mean [M, N, out], logvar [M, N, out]) with logvar soft-bounded by (min_logvar, max_logvar),
    vectors of size out shared by the members (as in MOPO); learnable parameters when
    `learn_logvar_bounds`, fixed buffers otherwise."""

    def __init__(self, members: int, in_dim: int, out_dim: int, hidden: Sequence[int],
                 activation: str = "relu", probabilistic: bool = False,
                 learn_logvar_bounds: bool = False, logvar_max_init: float = 0.5,
                 logvar_min_init: float = -10.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.members, self.in_dim, self.out_dim = members, in_dim, out_dim
        self.probabilistic = probabilistic
        dims = [in_dim, *hidden, out_dim * (2 if probabilistic else 1)]
        self.layers = nn.ModuleList(EnsembleLinear(members, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.activation = activation
        if probabilistic:
            max_lv = torch.full((out_dim,), float(logvar_max_init))
            min_lv = torch.full((out_dim,), float(logvar_min_init))
            if learn_logvar_bounds:
                self.max_logvar, self.min_logvar = nn.Parameter(max_lv), nn.Parameter(min_lv)
            else:
                self.register_buffer("max_logvar", max_lv)
                self.register_buffer("min_logvar", min_lv)

    def forward(self, x: torch.Tensor, members: slice | torch.Tensor | None = None):
        act = ACTIVATIONS[self.activation]
        inplace = not torch.is_grad_enabled()  # inference: no extra activation buffer per layer
        for layer in self.layers[:-1]:
            x = act(layer(x, members), inplace=inplace)
        out = self.layers[-1](x, members)
        if not self.probabilistic:
            return out
        mean, raw = out.split(self.out_dim, dim=-1)
        return mean, soft_clamp_logvar(raw, self.min_logvar, self.max_logvar)

    def weight_decay_penalty(self, weight_decay: float | Sequence[float]) -> torch.Tensor:
        """sum_l wd_l * ||W_l||^2 / 2 over the weights (not biases) of every member: an L2
        penalty, per layer when `weight_decay` is a list (MOPO), as tf.nn.l2_loss."""
        decays = per_layer(weight_decay, len(self.layers))
        total = self.layers[0].weight.new_zeros(())
        for wd, layer in zip(decays, self.layers):
            if wd:
                total = total + 0.5 * wd * layer.weight.square().sum()
        return total


def per_layer(weight_decay: float | Sequence[float], n_layers: int) -> list[float]:
    if isinstance(weight_decay, (int, float)):
        return [float(weight_decay)] * n_layers
    decays = [float(w) for w in weight_decay]
    if len(decays) != n_layers:
        raise ValueError(f"weight_decay has {len(decays)} entries for {n_layers} layers")
    return decays


class Normalizer(nn.Module):
    """x -> (x - mean) / std per dimension; mean and std are buffers (saved with the model).
    Dimensions whose std is below 1e-6 (constant in the data) keep std = 1, so that they are
    centred but never blown up."""

    MIN_STD = 1e-6

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        x = x.to(self.mean)
        self.mean.copy_(x.mean(0))
        std = x.std(0, unbiased=False) if x.shape[0] > 1 else torch.ones_like(self.std)
        self.std.copy_(torch.where(std < self.MIN_STD, torch.ones_like(std), std))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


class Prediction(NamedTuple):
    """Model outputs in raw units, one row per member: next_obs [M, N, obs_dim] (the mean),
    reward [M, N] (None without reward_target), next_obs_std [M, N, obs_dim] and reward_std
    [M, N] (None for deterministic models). M = 1 for predict(member=int); with a per-sample
    member tensor the leading member dim is dropped ([N, ...])."""
    next_obs: torch.Tensor
    reward: torch.Tensor | None = None
    next_obs_std: torch.Tensor | None = None
    reward_std: torch.Tensor | None = None


def gaussian_nll(mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 10 per member, [M]: mean over samples of (mu - y)^T Sigma^-1 (mu - y) + log det Sigma
    with diagonal Sigma, divided by the output dim D (as MOPO's code: a constant factor, same
    minimiser, and it keeps NLL, MSE and the penalties on MOPO's scale)."""
    return ((mean - target).square() * torch.exp(-logvar) + logvar).mean(dim=(1, 2))


def as_tensor(x, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float32, device=device)


class DynamicsEnsemble(nn.Module):
    """An ensemble model of s' (and r) given (s, a).

    Inputs [s, a] are standardised (`input_norm`); targets are y = standardise([s' - s, (r)])
    (`target_norm`), or raw [s' - s, r] with standardize_targets=False (MOPO's code standardises
    its inputs only: mopo/models/bnn.py:403, constructor.py:46-54), where the NLL, the log-variance
    bounds and the holdout MSE are in raw units. Deterministic members are trained with MSE
    (eq. 8), probabilistic ones with the Gaussian NLL (eq. 10); both are validated with the MSE
    in their target space (`holdout_mse`)."""

    def __init__(self, obs_dim: int, act_dim: int, members: int = 5, hidden: Sequence[int] = (1024, 1024),
                 probabilistic: bool = False, activation: str = "relu", reward_target: bool = False,
                 learn_logvar_bounds: bool = False, logvar_max_init: float = 0.5,
                 logvar_min_init: float = -10.0, standardize_targets: bool = True):
        super().__init__()
        self.obs_dim, self.act_dim, self.members = obs_dim, act_dim, members
        self.standardize_targets = standardize_targets
        self.probabilistic, self.reward_target = probabilistic, reward_target
        self.target_dim = obs_dim + (1 if reward_target else 0)
        self.net = EnsembleMLP(members, obs_dim + act_dim, self.target_dim, list(hidden), activation,
                               probabilistic, learn_logvar_bounds, logvar_max_init, logvar_min_init)
        self.input_norm = Normalizer(obs_dim + act_dim)
        self.target_norm = Normalizer(self.target_dim)
        self.register_buffer("normalizers_fitted", torch.zeros((), dtype=torch.bool))
        # Indices of the best members by holdout MSE (all members until a fit with n_elites).
        self.register_buffer("elites", torch.arange(members))

    @property
    def device(self) -> torch.device:
        return self.input_norm.mean.device

    # ---- what the trainer (algos/core/training.py) needs ------------------------------------
    def targets(self, obs: torch.Tensor, next_obs: torch.Tensor, rew: torch.Tensor | None) -> torch.Tensor:
        """Raw targets [s' - s (, r)], before the target standardisation."""
        delta = next_obs - obs
        if not self.reward_target:
            return delta
        if rew is None:
            raise ValueError("reward_target=True needs rew")
        return torch.cat([delta, rew.reshape(-1, 1)], dim=-1)

    @torch.no_grad()
    def fit_normalizers(self, x_raw: torch.Tensor, y_raw: torch.Tensor) -> None:
        """Input statistics from x_raw = [s, a]; target statistics from y_raw unless the targets
        stay raw (standardize_targets=False: the target normaliser is the identity)."""
        self.input_norm.fit(x_raw)
        if self.standardize_targets:
            self.target_norm.fit(y_raw)
        self.normalizers_fitted.fill_(True)

    def data_loss(self, xb: torch.Tensor, yb: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        """Per-member training loss [M] on standardised inputs xb [M, B, in] and targets yb (in the
        model's target space): MSE (eq. 8) or the Gaussian NLL (eq. 10)."""
        with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = self.net(xb)
        if self.probabilistic:
            return gaussian_nll(out[0].float(), out[1].float(), yb)
        return (out.float() - yb).square().mean(dim=(1, 2))

    @torch.no_grad()
    def holdout_mse(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """Per-member MSE [M] of the (mean) prediction on x [N, in], y [N, out], in the model's
        target space (standardised, or raw units with standardize_targets=False)."""
        total = x.new_zeros(self.members)
        for i in range(0, x.shape[0], chunk):
            out = self.net(x[i:i + chunk].expand(self.members, -1, -1))
            mean = out[0] if self.probabilistic else out
            total += (mean - y[i:i + chunk]).square().sum(dim=(1, 2))
        return total / (x.shape[0] * self.target_dim)

    # ---- prediction ----------------------------------------------------------------------
    # Rows per block of no-grad inference: the [members, rows, hidden] activations stay in cache.
    # One block of 60k rows spends ~30 % of its time copying the broadcast bias into a 0.7 GB
    # output (torch.profiler); blocks of 1024 rows made the paper-size labeler 1.9x faster.
    INFERENCE_ROWS = 1024

    def _forward_members(self, x: torch.Tensor, members) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Standardised outputs for standardised inputs x [m, N, in] of the selected members."""
        rows = self.INFERENCE_ROWS
        if not torch.is_grad_enabled() and x.shape[1] > rows:
            blocks = [self._forward_members(x[:, i:i + rows], members) for i in range(0, x.shape[1], rows)]
            mean = torch.cat([b[0] for b in blocks], dim=1)
            return mean, (torch.cat([b[1] for b in blocks], dim=1) if self.probabilistic else None)
        out = self.net(x, members)
        return (out[0], out[1]) if self.probabilistic else (out, None)

    def _to_prediction(self, obs: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor | None) -> Prediction:
        raw = self.target_norm.denormalize(mean)
        next_obs = obs + raw[..., :self.obs_dim]
        reward = raw[..., self.obs_dim] if self.reward_target else None
        if logvar is None:
            return Prediction(next_obs, reward)
        std = torch.exp(0.5 * logvar) * self.target_norm.std
        return Prediction(next_obs, reward, std[..., :self.obs_dim],
                          std[..., self.obs_dim] if self.reward_target else None)

    @torch.no_grad()
    def predict(self, obs, act, member: int | torch.Tensor | None = None) -> Prediction:
        """Next-state means (and reward, std) in raw units.

        member=None: all members, [M, N, ...]. member=int: only that member is computed (a slice
        of the weights), [1, N, ...]. member=LongTensor [N]: sample n uses member[n]; each member
        runs only on its own samples; [N, ...]. member=LongTensor [] (0-dim): one member for all
        samples chosen on the device, only its weights are used, [1, N, ...]. The two tensor forms
        never sync with the host (imagined rollouts, algos/core/rollouts.py): the per-sample form
        computes every member and keeps each sample's own."""
        dev = self.device
        obs, act = as_tensor(obs, dev), as_tensor(act, dev)
        x = self.input_norm.normalize(torch.cat([obs, act], dim=-1))
        if member is None:
            mean, logvar = self._forward_members(x.expand(self.members, -1, -1), None)
            return self._to_prediction(obs, mean, logvar)
        if isinstance(member, (int, np.integer)):
            m = int(member)
            if not -self.members <= m < self.members:
                raise IndexError(f"member {m} out of range for {self.members} members")
            m %= self.members
            mean, logvar = self._forward_members(x.unsqueeze(0), slice(m, m + 1))
            return self._to_prediction(obs, mean, logvar)
        member = torch.as_tensor(member, device=dev).long()
        if member.dim() == 0:
            mean, logvar = self._forward_members(x.unsqueeze(0), member.reshape(1))
            return self._to_prediction(obs, mean, logvar)
        if member.shape != (x.shape[0],):
            raise ValueError(f"per-sample member must have shape [{x.shape[0]}], got {tuple(member.shape)}")
        mean, logvar = self._forward_members(x.expand(self.members, -1, -1), None)
        pick = member.view(1, -1, 1).expand(1, -1, self.target_dim)
        return self._to_prediction(obs, mean.gather(0, pick)[0], None if logvar is None else logvar.gather(0, pick)[0])

    @torch.no_grad()
    def numpy_next_obs_means(self):
        """A numpy snapshot of every member's next-state mean: f(obs [n, obs_dim], act [n, act_dim])
        -> [M, n, obs_dim] float32, equal to predict(obs, act).next_obs up to float rounding.
        For one state at a time (MUSBO's eq. 22 exploration inside the collector), where
        torch's per-call overhead costs more than the matmuls. The input standardisation is
        folded into the first layer and the target scaling into the last."""
        layers = self.net.layers
        weights = [l.weight.detach().double() for l in layers]  # [M, in, out]
        biases = [l.bias.detach().double() for l in layers]     # [M, 1, out]
        in_mean, in_std = self.input_norm.mean.double(), self.input_norm.std.double()
        weights[0] = weights[0] / in_std[None, :, None]
        biases[0] = biases[0] - ((in_mean / in_std) @ layers[0].weight.detach().double())[:, None, :]
        d = self.obs_dim  # keep the state-delta means only (no log-variance, no reward)
        out_mean, out_std = self.target_norm.mean.double()[:d], self.target_norm.std.double()[:d]
        weights[-1] = weights[-1][..., :d] * out_std
        biases[-1] = biases[-1][..., :d] * out_std + out_mean
        weights = [w.cpu().numpy().astype(np.float32) for w in weights]
        biases = [b.cpu().numpy().astype(np.float32) for b in biases]
        swish = self.net.activation == "swish"

        def next_obs_means(obs: np.ndarray, act: np.ndarray) -> np.ndarray:
            obs = np.asarray(obs, np.float32)
            h = np.concatenate([obs, np.asarray(act, np.float32)], axis=-1)[None]
            for w, b in zip(weights[:-1], biases[:-1]):
                h = h @ w + b
                h = h / (1.0 + np.exp(-h)) if swish else np.maximum(h, 0.0)
            return obs + (h @ weights[-1] + biases[-1])

        return next_obs_means

    @torch.no_grad()
    def predict_trajectory(self, obs0, actions, member: str | int = "mean", clip_obs: tuple | None = None) -> torch.Tensor:
        """Open-loop replay (Fig. 6): from obs0 [N, obs_dim], feed the recorded actions
        [N, T, act_dim] and the model's own predictions back in. Returns the predicted states
        s_1..s_T, [N, T, obs_dim]. member="mean": the ensemble mean next state at every step;
        an int: that member alone. clip_obs=(low, high) clamps every predicted state into that
        box, as the imagined rollouts of training do (an open-loop replay of 1000 steps can
        otherwise diverge to inf)."""
        dev = self.device
        obs = as_tensor(obs0, dev)
        actions = as_tensor(actions, dev)
        if clip_obs is not None:
            low, high = (as_tensor(b, dev) for b in clip_obs)
        out = []
        for t in range(actions.shape[1]):
            if member == "mean":
                obs = self.predict(obs, actions[:, t]).next_obs.mean(0)
            elif isinstance(member, (int, np.integer)):
                obs = self.predict(obs, actions[:, t], member=int(member)).next_obs[0]
            else:
                raise ValueError(f"member must be 'mean' or an int, got {member!r}")
            if clip_obs is not None:
                obs = torch.maximum(torch.minimum(obs, high), low)
            out.append(obs)
        return torch.stack(out, dim=1)


def adam(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam with the fused kernel when the device supports it (one kernel for all parameters;
    no per-parameter Python loop), else the foreach implementation."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, foreach=True)
