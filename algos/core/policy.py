"""The Gaussian policy pi_beta / pi_theta shared by MUSBO and BREMEN (MUSBO section 4, appendix F).

mean(s) = tanh(MLP((s - obs_mean) / obs_std)); actions unclipped. Two log-std regimes
(`policy.log_std`, see docs/paper_to_code.md):
- "state_dependent" (BREMEN's official policy, matsuolab/BREMEN model/policies.py:36 and :130-134):
  a second output head on the last hidden layer, log_std(s) = lo + (hi - lo) (tanh(W h + b) + 1) / 2,
  bounded to [lo, hi] = [min_log_std, max_log_std] ([-5, 0], model/policies.py:7-8). Here b is the
  parameter `log_std` and W the parameter `log_std_weight`.
- "global": one free log-std per action dimension (`log_std`, starting at init_log_std), clamped
  below at min_log_std: the project's earlier policy (../shared/spec/MUSBO.md calls the policy
  "state-independent"; the MUSBO paper itself does not say, so MUSBO follows BREMEN by default).

Choices (see docs/paper_to_code.md):
- Hidden activation ReLU, 2 x 200: BREMEN's policy (the MUSBO paper names only the sizes).
- The observation normaliser is set from the data by behaviour cloning (eq. 11) and stays
  fixed during TRPO, so that the KL constraint of eq. 13 compares the same function of s.
- TRPO's imagined actions may be sampled with a fixed std (model_trpo.trpo_sampler, BREMEN's
  --gaussian 0.1 --const_sampling); the likelihood ratio and the KL always use the policy's own std.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

# Observation dimensions with (almost) no spread are divided by this instead of their std.
MIN_OBS_STD = 1e-6
LOG_STD_KINDS = ("state_dependent", "global")


class GaussianPolicy(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden=(200, 200), init_log_std: float = -0.5,
                 min_log_std: float = -5.0, log_std: str = "global", max_log_std: float = 0.0):
        super().__init__()
        if log_std not in LOG_STD_KINDS:
            raise ValueError(f"policy.log_std must be one of {LOG_STD_KINDS}, got {log_std!r}")
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.log_std_kind = log_std
        self.min_log_std, self.max_log_std = float(min_log_std), float(max_log_std)
        if self.state_dependent and not self.min_log_std < self.max_log_std:
            raise ValueError(f"policy.min_log_std ({min_log_std}) must be below policy.max_log_std ({max_log_std})")
        sizes = [self.obs_dim, *[int(h) for h in hidden]]
        self.hidden_layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes[:-1], sizes[1:]))
        self.mean_head = nn.Linear(sizes[-1], self.act_dim)
        if self.state_dependent:
            # BREMEN's output layer: weights ~ 0.01 scale, bias 0 (model/policies.py:41-49), so that
            # log_std(s) starts near the middle of [lo, hi]
            self.log_std_weight = nn.Parameter(0.01 * torch.randn(self.act_dim, sizes[-1]) / np.sqrt(sizes[-1]))
            self.log_std = nn.Parameter(torch.zeros(self.act_dim))
        else:
            self.log_std = nn.Parameter(torch.full((self.act_dim,), float(init_log_std)))
        self.register_buffer("obs_mean", torch.zeros(self.obs_dim))
        self.register_buffer("obs_std", torch.ones(self.obs_dim))

    @property
    def state_dependent(self) -> bool:
        return self.log_std_kind == "state_dependent"

    @property
    def device(self) -> torch.device:
        return self.log_std.device

    # ---- the normaliser (set by weighted_bc, fixed afterwards) ----
    @torch.no_grad()
    def set_obs_normalizer(self, mean, std) -> None:
        mean = torch.as_tensor(mean, dtype=torch.float32, device=self.obs_mean.device).reshape(self.obs_dim)
        std = torch.as_tensor(std, dtype=torch.float32, device=self.obs_std.device).reshape(self.obs_dim)
        self.obs_mean.copy_(mean)
        self.obs_std.copy_(std.clamp_min(MIN_OBS_STD))

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def mean_parameters(self) -> list[nn.Parameter]:
        """Parameters of the mean network (hidden layers and mean head)."""
        return [p for layer in (*self.hidden_layers, self.mean_head) for p in layer.parameters()]

    def log_std_parameters(self) -> list[nn.Parameter]:
        """[log_std_weight, log_std] (state-dependent) or [log_std] (global)."""
        return [self.log_std_weight, self.log_std] if self.state_dependent else [self.log_std]

    def trpo_parameters(self) -> list[nn.Parameter]:
        """Every trainable parameter, in the order of TRPO's flat vectors: mean network, then log-std."""
        return [*self.mean_parameters(), *self.log_std_parameters()]

    # ---- the distribution ----
    def hidden(self, obs: torch.Tensor) -> torch.Tensor:
        x = self.normalize(obs)
        for layer in self.hidden_layers:
            x = torch.relu(layer(x))
        return x

    def pre_tanh_mean(self, obs: torch.Tensor) -> torch.Tensor:
        return self.mean_head(self.hidden(obs))

    def clamped_log_std(self) -> torch.Tensor:
        """The global log-std, clamped below at min_log_std (global regime only)."""
        if self.state_dependent:
            raise ValueError("clamped_log_std() is the global log-std; a state-dependent policy has "
                             "log_std(s): use distribution(obs)")
        return self.log_std.clamp(min=self.min_log_std)

    def bound_log_std(self, pre: torch.Tensor) -> torch.Tensor:
        """lo + (hi - lo) (tanh(pre) + 1) / 2 (BREMEN model/policies.py:133)."""
        return self.min_log_std + 0.5 * (self.max_log_std - self.min_log_std) * (torch.tanh(pre) + 1.0)

    def _outputs(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tanh(self.mean_head(h))
        if self.state_dependent:
            return mean, self.bound_log_std(torch.addmm(self.log_std, h, self.log_std_weight.T))
        return mean, self.clamped_log_std().expand_as(mean)

    def distribution(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean [B, act_dim], log_std [B, act_dim]); a global log-std is a broadcast view."""
        return self._outputs(self.hidden(obs))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.distribution(obs)

    def log_prob(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """log pi(a|s) [B], summed over action dimensions."""
        mean, log_std = self.distribution(obs)
        return gaussian_log_prob(mean, log_std, act)

    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """a ~ N(mean(s), std(s)^2), unclipped."""
        mean, log_std = self.distribution(obs)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + log_std.exp() * noise

    def mean_action(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.pre_tanh_mean(obs))

    def kl_from(self, old_mean: torch.Tensor, old_log_std: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of KL(pi_old(.|s) || pi(.|s)), closed form for diagonal Gaussians."""
        mean, log_std = self.distribution(obs)
        return gaussian_kl(old_mean, old_log_std, mean, log_std).mean()

    def linearization(self, obs: torch.Tensor) -> "PolicyLinearization":
        """Jacobian-vector products of the network outputs (the mean, and a state-dependent log-std)
        at the current weights, activations computed once: the Gauss-Newton Fisher-vector product of TRPO."""
        return PolicyLinearization(self, obs)

    # ---- acting in the real env ----
    def numpy_policy(self, mode: str = "deterministic", std: float | None = None, seed: int | None = None,
                     clip: bool = True) -> "NumpyPolicy":
        """A numpy callable obs [n, obs_dim] -> actions [n, act_dim] for the collector.

        A snapshot: it copies the current weights, so later training does not change it.
        `deterministic`: tanh mean; `stochastic`: mean + N(0, std(s)^2) with the policy's own std;
        `fixed_std`: mean + N(0, std^2) (BREMEN's exploration). The noise comes from the
        policy's own numpy generator seeded by `seed`. `clip` clips to [-1, 1], the action
        bounds the tanh mean assumes.
        """
        if mode not in ("deterministic", "stochastic", "fixed_std"):
            raise ValueError(f"numpy_policy mode must be deterministic, stochastic or fixed_std, got {mode!r}")
        if mode == "fixed_std" and std is None:
            raise ValueError("numpy_policy(mode='fixed_std') needs std")
        with torch.no_grad():
            log_std_head = None
            if mode == "stochastic" and self.state_dependent:
                noise_std = None
                log_std_head = (np.ascontiguousarray(self.log_std_weight.detach().T.cpu().numpy(), dtype=np.float32),
                                self.log_std.detach().cpu().numpy().astype(np.float32),
                                self.min_log_std, self.max_log_std)
            elif mode == "stochastic":
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
        return NumpyPolicy(weights, biases, noise_std, seed, clip, log_std_head)


class PolicyLinearization:
    """The policy's network linearised on a batch: `jvp(tangents) -> [B, K]` and
    `vjp(cotangent [B, K]) -> tangents`, K = act_dim outputs (the tanh mean) for a global log-std
    or 2 act_dim (the tanh mean, then the bounded log-std(s)) for a state-dependent one; tangents
    ordered as `params` (mean_parameters(), then log_std_weight, log_std when state-dependent).
    `mean` and `log_std` [B, act_dim] are the outputs at the current weights.

    Written out by hand for the ReLU MLP because TRPO calls it twice per conjugate-gradient
    step on up to 50k samples: with the activations (and ReLU masks, output derivatives) kept
    from one forward pass, each product is 2 matmuls per layer and no autograd graph
    (bench/bench_trpo.py, 50k samples: ~0.3 CPU-s per product, ~2.4x less than double backward
    or torch.func.jvp/vjp). Each layer input carries a column of ones so that a weight and its
    bias are one matmul (the two output heads are one [K, hidden] matrix), and the [B, hidden]
    products go to buffers allocated once (fresh 40 MB tensors per product cost page faults).
    """

    def __init__(self, policy: GaussianPolicy, obs: torch.Tensor):
        self.state_dependent = policy.state_dependent
        with torch.no_grad():
            x = policy.normalize(obs)
            ones = torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)
            self.inputs, self.masks = [], []
            for layer in policy.hidden_layers:
                self.inputs.append(torch.cat([x, ones], 1))
                x = torch.relu(layer(x))
                self.masks.append((x > 0).to(x.dtype))
            self.inputs.append(torch.cat([x, ones], 1))
            self.mean, self.log_std = policy._outputs(x)
            out_grad = 1.0 - self.mean.pow(2)
            last = policy.mean_head.weight.detach()
            if self.state_dependent:  # d log_std / d pre = (hi - lo) / 2 * (1 - tanh(pre)^2)
                t = torch.tanh(torch.addmm(policy.log_std, x, policy.log_std_weight.T))
                half = 0.5 * (policy.max_log_std - policy.min_log_std)
                out_grad = torch.cat([out_grad, half * (1.0 - t.pow(2))], 1)
                last = torch.cat([last, policy.log_std_weight.detach()], 0)
            self.out_grad = out_grad
            self.weights = [*(layer.weight.detach() for layer in policy.hidden_layers), last]
            self.params = policy.mean_parameters() + (policy.log_std_parameters() if self.state_dependent else [])
            # one [B, hidden_i] buffer per hidden layer, shared by jvp (dh_i) and vjp (dL/dh_i)
            self.buffers = [torch.empty_like(m) for m in self.masks]

    def _last_layer_tangent(self, tangents: list[torch.Tensor]) -> torch.Tensor:
        i = 2 * (len(self.weights) - 1)
        rows = [torch.cat([tangents[i], tangents[i + 1].unsqueeze(1)], 1)]
        if self.state_dependent:
            rows.append(torch.cat([tangents[i + 2], tangents[i + 3].unsqueeze(1)], 1))
        return torch.cat(rows, 0)

    def jvp(self, tangents: list[torch.Tensor]) -> torch.Tensor:
        d = None
        n_hidden = len(self.buffers)
        for i, (inp, w) in enumerate(zip(self.inputs, self.weights)):
            if i < n_hidden:
                dw_aug = torch.cat([tangents[2 * i], tangents[2 * i + 1].unsqueeze(1)], 1)
                z = torch.mm(inp, dw_aug.T, out=self.buffers[i])
            else:
                z = inp @ self._last_layer_tangent(tangents).T
            if d is not None:
                z.addmm_(d, w.T)                    # dW h + db + W dh
            d = z.mul_(self.masks[i] if i < n_hidden else self.out_grad)
        return d

    def vjp(self, cotangent: torch.Tensor) -> list[torch.Tensor]:
        g = cotangent * self.out_grad
        grads = [None] * (2 * len(self.weights))
        for i in reversed(range(len(self.weights))):
            g_aug = g.T @ self.inputs[i]
            grads[2 * i], grads[2 * i + 1] = g_aug[:, :-1], g_aug[:, -1]
            if i > 0:
                g = torch.mm(g, self.weights[i], out=self.buffers[i - 1]).mul_(self.masks[i - 1])
        if self.state_dependent:  # split the last layer's rows: mean head, then log-std head
            a = self.mean.shape[1]
            w, b = grads[-2], grads[-1]
            grads[-2:] = [w[:a], b[:a], w[a:], b[a:]]
        return grads


class NumpyPolicy:
    """Plain numpy forward pass of a GaussianPolicy snapshot. For one row (one env step) it takes
    ~10-20 us against ~60-90 us for a torch call (bench/bench_trpo.py): np.dot into hidden buffers
    kept from the previous call of the same batch size, no autograd or dispatcher overhead.
    `log_std_head` (W^T, b, lo, hi): noise with the state-dependent std of the policy."""

    def __init__(self, weights, biases, noise_std, seed, clip, log_std_head=None):
        self.weights, self.biases = weights, biases
        self.noise_std = noise_std
        self.log_std_head = log_std_head
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
        noise_std = self.noise_std
        if self.log_std_head is not None:
            if len(self.weights) == 1:  # no hidden layer: the head reads the normalised obs
                raise ValueError("a stochastic numpy policy with a state-dependent log-std needs a hidden layer")
            w, b, lo, hi = self.log_std_head
            noise_std = np.exp(lo + 0.5 * (hi - lo) * (np.tanh(x @ w + b) + 1.0)).astype(np.float32)
        if noise_std is not None:
            act += noise_std * self.rng.standard_normal(act.shape, dtype=np.float32)
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
