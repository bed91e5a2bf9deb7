"""The Gaussian policy pi_beta / pi_theta shared by MUSBO and BREMEN (MUSBO section 4, appendix F).

mean(s) = tanh(MLP((s - obs_mean) / obs_std)), a state-independent log-std, actions unclipped.

Choices (see docs/paper_to_code.md):
- Hidden activation ReLU, 2 x 200: BREMEN's policy (the MUSBO paper names only the sizes).
- The observation normaliser is set once from the data by behaviour cloning (eq. 11) and stays
  fixed during TRPO, so that the KL constraint of eq. 13 compares the same function of s.
- The log-std is a free parameter clamped below at `min_log_std`; behaviour cloning does not
  train it (bc.py), TRPO does.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

# Observation dimensions with (almost) no spread are divided by this instead of their std.
MIN_OBS_STD = 1e-6


class GaussianPolicy(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden=(200, 200), init_log_std: float = -0.5,
                 min_log_std: float = -5.0):
        super().__init__()
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.min_log_std = float(min_log_std)
        sizes = [self.obs_dim, *[int(h) for h in hidden]]
        self.hidden_layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes[:-1], sizes[1:]))
        self.mean_head = nn.Linear(sizes[-1], self.act_dim)
        self.log_std = nn.Parameter(torch.full((self.act_dim,), float(init_log_std)))
        self.register_buffer("obs_mean", torch.zeros(self.obs_dim))
        self.register_buffer("obs_std", torch.ones(self.obs_dim))

    # ---- the normaliser (set by weighted_bc, fixed afterwards) ----
    @torch.no_grad()
    def set_obs_normalizer(self, mean, std) -> None:
        mean = torch.as_tensor(mean, dtype=torch.float32, device=self.obs_mean.device).reshape(self.obs_dim)
        std = torch.as_tensor(std, dtype=torch.float32, device=self.obs_std.device).reshape(self.obs_dim)
        self.obs_mean.copy_(mean)
        self.obs_std.copy_(std.clamp_min(MIN_OBS_STD))

    def mean_parameters(self) -> list[nn.Parameter]:
        """Parameters of the mean network (all but the log-std): what behaviour cloning trains."""
        return [p for layer in (*self.hidden_layers, self.mean_head) for p in layer.parameters()]

    # ---- the distribution ----
    def pre_tanh_mean(self, obs: torch.Tensor) -> torch.Tensor:
        x = (obs - self.obs_mean) / self.obs_std
        for layer in self.hidden_layers:
            x = torch.relu(layer(x))
        return self.mean_head(x)

    def clamped_log_std(self) -> torch.Tensor:
        return self.log_std.clamp(min=self.min_log_std)

    def distribution(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean [B, act_dim], log_std [B, act_dim]); the log-std is a broadcast view."""
        mean = torch.tanh(self.pre_tanh_mean(obs))
        return mean, self.clamped_log_std().expand_as(mean)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.distribution(obs)

    def log_prob(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """log pi(a|s) [B], summed over action dimensions."""
        mean, log_std = self.distribution(obs)
        return gaussian_log_prob(mean, log_std, act)

    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """a ~ N(mean(s), std^2), unclipped."""
        mean, log_std = self.distribution(obs)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + log_std.exp() * noise

    def mean_action(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.pre_tanh_mean(obs))

    def kl_from(self, old_mean: torch.Tensor, old_log_std: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of KL(pi_old(.|s) || pi(.|s)), closed form for diagonal Gaussians."""
        mean, log_std = self.distribution(obs)
        return gaussian_kl(old_mean, old_log_std, mean, log_std).mean()

    def mean_linearization(self, obs: torch.Tensor) -> "MeanLinearization":
        """Jacobian-vector products of the mean w.r.t. mean_parameters() at the current weights,
        activations computed once: the fast Gauss-Newton Fisher-vector product of TRPO."""
        return MeanLinearization(self, obs)

    # ---- acting in the real env ----
    def numpy_policy(self, mode: str = "deterministic", std: float | None = None, seed: int | None = None,
                     clip: bool = True) -> "NumpyPolicy":
        """A numpy callable obs [n, obs_dim] -> actions [n, act_dim] for the collector.

        A snapshot: it copies the current weights, so later training does not change it.
        `deterministic`: tanh mean; `stochastic`: mean + N(0, exp(log_std)^2);
        `fixed_std`: mean + N(0, std^2) (BREMEN's exploration). The noise comes from the
        policy's own numpy generator seeded by `seed`. `clip` clips to [-1, 1], the action
        bounds the tanh mean assumes.
        """
        if mode not in ("deterministic", "stochastic", "fixed_std"):
            raise ValueError(f"numpy_policy mode must be deterministic, stochastic or fixed_std, got {mode!r}")
        if mode == "fixed_std" and std is None:
            raise ValueError("numpy_policy(mode='fixed_std') needs std")
        with torch.no_grad():
            if mode == "stochastic":
                noise_std = self.clamped_log_std().exp().cpu().numpy().astype(np.float32)
            elif mode == "fixed_std":
                noise_std = np.float32(std)
            else:
                noise_std = None
            weights, biases = [], []
            layers = [*self.hidden_layers, self.mean_head]
            for i, layer in enumerate(layers):
                w = layer.weight.detach().double()
                b = layer.bias.detach().double()
                if i == 0:  # fold the normaliser into the first layer: W ((s - m) / sd) + b
                    w = w / self.obs_std.double()
                    b = b - w @ self.obs_mean.double()
                weights.append(np.ascontiguousarray(w.T.cpu().numpy(), dtype=np.float32))
                biases.append(b.cpu().numpy().astype(np.float32))
        return NumpyPolicy(weights, biases, noise_std, seed, clip)


class MeanLinearization:
    """The tanh mean network linearised on a batch: `jvp(tangents) -> [B, act_dim]` and
    `vjp(cotangent [B, act_dim]) -> tangents`, tangents ordered as mean_parameters().

    Written out by hand for the ReLU MLP because TRPO calls it twice per conjugate-gradient
    step on up to 50k samples: with the activations (and ReLU masks, tanh derivative) kept
    from one forward pass, each product is 2 matmuls per layer and no autograd graph
    (bench/bench_trpo.py, 50k samples: ~0.3 CPU-s per product, ~2.4x less than double backward
    or torch.func.jvp/vjp). Each layer
    input carries a column of ones so that a weight and its bias are one matmul, and the
    [B, hidden] products go to buffers allocated once (fresh 40 MB tensors per product cost
    page faults: system time).
    """

    def __init__(self, policy: GaussianPolicy, obs: torch.Tensor):
        layers = [*policy.hidden_layers, policy.mean_head]
        with torch.no_grad():
            x = (obs - policy.obs_mean) / policy.obs_std
            ones = torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)
            self.inputs, self.masks = [], []
            for layer in policy.hidden_layers:
                self.inputs.append(torch.cat([x, ones], 1))
                x = torch.relu(layer(x))
                self.masks.append((x > 0).to(x.dtype))
            self.inputs.append(torch.cat([x, ones], 1))
            self.mean = torch.tanh(policy.mean_head(x))
            self.dtanh = 1.0 - self.mean.pow(2)
            self.weights = [layer.weight.detach() for layer in layers]
            # one [B, hidden_i] buffer per hidden layer, shared by jvp (dh_i) and vjp (dL/dh_i)
            self.buffers = [torch.empty_like(m) for m in self.masks]

    def jvp(self, tangents: list[torch.Tensor]) -> torch.Tensor:
        d = None
        for i, (inp, w) in enumerate(zip(self.inputs, self.weights)):
            dw_aug = torch.cat([tangents[2 * i], tangents[2 * i + 1].unsqueeze(1)], 1)
            z = torch.mm(inp, dw_aug.T, out=self.buffers[i]) if i < len(self.buffers) else inp @ dw_aug.T
            if d is not None:
                z.addmm_(d, w.T)                    # dW h + db + W dh
            d = z.mul_(self.masks[i] if i < len(self.masks) else self.dtanh)
        return d

    def vjp(self, cotangent: torch.Tensor) -> list[torch.Tensor]:
        g = cotangent * self.dtanh
        grads = [None] * (2 * len(self.weights))
        for i in reversed(range(len(self.weights))):
            g_aug = g.T @ self.inputs[i]
            grads[2 * i], grads[2 * i + 1] = g_aug[:, :-1], g_aug[:, -1]
            if i > 0:
                g = torch.mm(g, self.weights[i], out=self.buffers[i - 1]).mul_(self.masks[i - 1])
        return grads


class NumpyPolicy:
    """Plain numpy forward pass of a GaussianPolicy snapshot. For one row (one env step) it takes
    ~10-20 us against ~60-90 us for a torch call (bench/bench_trpo.py): np.dot into hidden buffers
    kept from the previous call of the same batch size, no autograd or dispatcher overhead."""

    def __init__(self, weights, biases, noise_std, seed, clip):
        self.weights, self.biases = weights, biases
        self.noise_std = noise_std
        self.rng = np.random.default_rng(seed)
        self.clip = clip
        self._hidden_buffers = ()

    def __call__(self, obs) -> np.ndarray:
        x = np.asarray(obs, dtype=np.float32)
        if len(self._hidden_buffers) == 0 or self._hidden_buffers[0].shape[:-1] != x.shape[:-1]:
            self._hidden_buffers = tuple(np.empty((*x.shape[:-1], b.shape[0]), np.float32)
                                         for b in self.biases[:-1])
        for w, b, h in zip(self.weights, self.biases, self._hidden_buffers):
            np.dot(x, w, out=h)
            h += b
            np.maximum(h, 0.0, out=h)
            x = h
        act = np.dot(x, self.weights[-1])  # a fresh array: the caller may keep it
        act += self.biases[-1]
        np.tanh(act, out=act)
        if self.noise_std is not None:
            act += self.noise_std * self.rng.standard_normal(act.shape, dtype=np.float32)
            if self.clip:
                np.clip(act, -1.0, 1.0, out=act)
        return act


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    z = (act - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * np.log(2.0 * np.pi)).sum(-1)


def gaussian_kl(mean0, log_std0, mean1, log_std1) -> torch.Tensor:
    """KL(N(mean0, std0^2) || N(mean1, std1^2)) per row, summed over dimensions."""
    var0, var1 = torch.exp(2.0 * log_std0), torch.exp(2.0 * log_std1)
    return (log_std1 - log_std0 + (var0 + (mean0 - mean1).pow(2)) / (2.0 * var1) - 0.5).sum(-1)
