"""Uncertainty-weighted TRPO (MUSBO eq. 13; w = 1 gives BREMEN's plain TRPO), GAE and baselines.

    max_theta  E[ pi_theta(a|s) / pi_old(a|s) * A(s, a) * w(s, a) ]   s.t.  E[ KL(pi_old || pi_theta) ] <= delta

One call of `policy_update` is one TRPO iteration of Algorithm 1 (step 5): values from the
baseline, GAE, normalised advantages, one natural-gradient step (conjugate gradient on
Fisher-vector products, step scaled to the KL radius, line search), baseline refit.

Choices (see docs/paper_to_code.md):
- The surrogate and the KL are means over the samples of the batch; the weights multiply the
  surrogate only, never the KL constraint.
- Fisher-vector products use the Gauss-Newton form F = J^T M J of the mean KL (exact for a
  Gaussian policy: M = 1/sigma(s)^2 on the mean, 2 on each log-std output), optionally on a
  random subset of `fvp_subsample` x B samples (as OpenAI baselines' TRPO does with every 5th
  sample); `fvp_method="double_backward"` is the textbook Hessian of the KL, kept as a reference.
- GAE on [T, N] with path boundaries at terminations and at the lane's end (t = T-1): the value
  after every path is 0, as BREMEN's sampler appends it (matsuolab/BREMEN
  libs/samplers/vectorized_sampler.py:115); `bootstrap_cutoff` bootstraps V(s') at the cut-off
  instead. Vectorised: a discounted reverse cumsum with resets as a log2(T)-pass doubling scan.
- Line search: BREMEN's (libs/misc/misc_utils.py:27-39; rule "bremen") or a backtracking search
  with a KL check ("kl_backtrack", the project's earlier rule).
- No host sync inside conjugate gradient; the line search syncs once per candidate it tries.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from algos.config import BATCH_ASSEMBLIES, LINE_SEARCHES
from algos.core.policy import MIN_OBS_STD, GaussianPolicy, PolicyLinearization, gaussian_kl, gaussian_log_prob

# BREMEN's linear baseline (model/baselines.py:9-33, rllab's LinearFeatureBaseline with BREMEN's
# features): observations normalised by the policy's running statistics and clipped to +-10
# (baselines.py:17-18), t = step in the path / 100 (baselines.py:20), ridge coefficient 1e-5
# raised x10 while the solution is not finite (baselines.py:26-34).
LINEAR_BASELINE_OBS_CLIP = 10.0
LINEAR_BASELINE_REG = 1e-5
LINEAR_BASELINE_TIME_SCALE = 100.0
# The MLP baseline's time input: t / 1000 (the 1000-step episodes of the envs).
TIME_SCALE = 1000.0
ADV_EPS = 1e-8
# BREMEN's line search (libs/misc/misc_utils.py:28-31): step fractions 0.5^k, k < 10, accepted
# when actual / expected improvement > 0.1 and the actual improvement is positive.
BREMEN_ACCEPT_RATIO = 0.1
BREMEN_BACKTRACK = 0.5


def _check_finite(name: str, *tensors: torch.Tensor) -> None:
    if not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        raise FloatingPointError(f"non-finite {name} (phase=policy)")


# ---------------------------------------------------------------- GAE
def discounted_reverse_cumsum(x: torch.Tensor, ends: torch.Tensor, discount: float) -> torch.Tensor:
    """y_t = x_t + discount * y_{t+1}, the sum restarting after every step where ends[t] is True,
    for [T, N] tensors (time first). No loop over time: a doubling scan (Hillis-Steele) of the
    affine recurrence, ceil(log2 T) passes of three [T, N] ops each. After the pass with offset d,
    y_t holds the terms t..t+2d-1 of its path and c_t the product of the links over them."""
    T = x.shape[0]
    y = x.clone()
    c = torch.where(ends.bool(), torch.zeros((), dtype=x.dtype, device=x.device),
                    torch.full((), float(discount), dtype=x.dtype, device=x.device))
    d = 1
    while d < T:                                          # log2(T) passes
        y = torch.cat([y[:-d] + c[:-d] * y[d:], y[-d:]])
        c = torch.cat([c[:-d] * c[d:], torch.zeros_like(c[-d:])])
        d *= 2
    return y


def gae(rew, values, terminated, gamma: float, lam: float, last_values=None, alive=None):
    """Generalised advantage estimation over [T, N] (time first).

    A lane's path ends where `terminated` and at t = T-1 (the cut-off); a new path starts after.
    delta_t = r_t + gamma * V_next_t - V(s_t) with V_next_t = values[t+1] inside a path and 0
    after its end (BREMEN's code), except at the cut-off of a lane not terminated there when
    `last_values` [N] (= V(s'_{T-1})) is given (bootstrap). A_t = delta_t + gamma lam A_{t+1}
    within a path. `alive` [T, N] (optional): steps with alive = 0 have delta = 0 (their values
    may be garbage: `where`, not multiplication). Returns (A, A + V), both 0 on dead steps.
    """
    terminated = terminated.bool()
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    ends = terminated.clone()
    ends[-1] = True
    next_values = torch.cat([values[1:], torch.zeros_like(values[:1])])
    if last_values is not None:
        next_values[-1] = last_values
    next_values = torch.where(terminated if last_values is not None else ends, zero, next_values)
    delta = rew + gamma * next_values - values
    if alive is not None:
        delta = torch.where(alive > 0, delta, zero)
    adv = discounted_reverse_cumsum(delta, ends, gamma * lam)
    returns = adv + values
    if alive is not None:
        returns = torch.where(alive > 0, returns, zero)
    return adv, returns


# ---------------------------------------------------------------- baselines
def _masked(mask, obs, timesteps, returns):
    """The steps with mask > 0 of [T, N, ...] tensors, flattened; mask None: every step (a
    reshape, no boolean indexing and its host sync)."""
    if mask is None:
        return obs.reshape(-1, obs.shape[-1]), timesteps.reshape(-1), returns.reshape(-1)
    keep = mask > 0
    return obs[keep], timesteps[keep], returns[keep]


class LinearBaseline(nn.Module):
    """BREMEN's value baseline: V(s, t) = [o, o^2, t, t^2, t^3, 1] . c with o = clip(normalise(s),
    +-10) and t = steps since the path started / time_scale, c by ridge regression on the value
    targets (A + V) of the alive steps. `normalize`: obs -> normalised obs (the policy's
    normaliser, as BREMEN shares its running statistics, trpo.py:66-68), None: raw obs.
    Predicts 0 before its first fit."""

    def __init__(self, obs_dim: int, reg: float = LINEAR_BASELINE_REG, time_scale: float = LINEAR_BASELINE_TIME_SCALE,
                 normalize: Callable | None = None):
        super().__init__()
        self.reg, self.time_scale, self.normalize = reg, float(time_scale), normalize
        self.register_buffer("coef", torch.zeros(2 * obs_dim + 4, dtype=torch.float64))

    def features(self, obs: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.normalize is not None:
            obs = self.normalize(obs)
        s = obs.to(torch.float64).clamp(-LINEAR_BASELINE_OBS_CLIP, LINEAR_BASELINE_OBS_CLIP)
        t = (timesteps.to(torch.float64) / self.time_scale).unsqueeze(-1)
        return torch.cat([s, s * s, t, t * t, t * t * t, torch.ones_like(t)], -1)

    def fit(self, obs, timesteps, returns, mask=None, generator=None) -> None:
        obs, timesteps, returns = _masked(mask, obs, timesteps, returns)
        x = self.features(obs, timesteps)
        y = returns.to(torch.float64)
        xtx, xty = x.T @ x, x.T @ y
        eye = torch.eye(xtx.shape[0], dtype=xtx.dtype, device=xtx.device)
        reg = self.reg
        for _ in range(5):
            coef = torch.linalg.solve(xtx + reg * eye, xty)
            if bool(torch.isfinite(coef).all()):
                self.coef.copy_(coef)
                return
            reg *= 10.0
        raise FloatingPointError("linear baseline fit did not give finite coefficients (phase=policy)")

    def predict(self, obs, timesteps) -> torch.Tensor:
        return (self.features(obs, timesteps) @ self.coef).to(obs.dtype)


class MLPBaseline(nn.Module):
    """An MLP value function V(s, t) (the MUSBO paper's "value function of the same shape"):
    inputs standardised with the statistics of its first fit, targets scaled likewise; Adam for
    `epochs` passes over the alive steps at each fit. Predicts 0 before its first fit."""

    def __init__(self, obs_dim: int, hidden=(200, 200), lr: float = 1e-3, epochs: int = 5,
                 batch_size: int = 1000, time_scale: float = TIME_SCALE):
        super().__init__()
        self.epochs, self.batch_size, self.time_scale = int(epochs), int(batch_size), time_scale
        sizes = [obs_dim + 1, *[int(h) for h in hidden]]
        layers = []
        for i, o in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(i, o), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-1], 1))
        self.register_buffer("in_mean", torch.zeros(obs_dim + 1))
        self.register_buffer("in_std", torch.ones(obs_dim + 1))
        self.register_buffer("ret_mean", torch.zeros(()))
        self.register_buffer("ret_std", torch.ones(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)

    def _raw_inputs(self, obs, timesteps):
        return torch.cat([obs, (timesteps.to(obs.dtype) / self.time_scale).unsqueeze(-1)], -1)

    def fit(self, obs, timesteps, returns, mask=None, generator=None) -> None:
        obs, timesteps, returns = _masked(mask, obs, timesteps, returns)
        x = self._raw_inputs(obs, timesteps)
        y = returns.to(obs.dtype)
        if not bool(self.fitted):
            self.in_mean.copy_(x.mean(0))
            self.in_std.copy_(x.std(0).clamp_min(MIN_OBS_STD) if x.shape[0] > 1 else torch.ones_like(self.in_std))
            self.ret_mean.copy_(y.mean())
            self.ret_std.copy_(y.std().clamp_min(MIN_OBS_STD) if y.shape[0] > 1 else torch.ones_like(self.ret_std))
            self.fitted.fill_(True)
        x = (x - self.in_mean) / self.in_std
        y = (y - self.ret_mean) / self.ret_std
        n = x.shape[0]
        for _ in range(self.epochs):
            dev = generator.device if generator is not None else "cpu"
            perm = torch.randperm(n, generator=generator, device=dev).to(x.device)
            for start in range(0, n, self.batch_size):
                idx = perm[start:start + self.batch_size]
                loss = (self.net(x[idx]).squeeze(-1) - y[idx]).pow(2).mean()
                _check_finite("value loss", loss)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()

    def predict(self, obs, timesteps) -> torch.Tensor:
        if not bool(self.fitted):
            return torch.zeros(obs.shape[:-1], dtype=obs.dtype, device=obs.device)
        with torch.no_grad():
            x = (self._raw_inputs(obs, timesteps) - self.in_mean) / self.in_std
            return self.net(x).squeeze(-1) * self.ret_std + self.ret_mean


def make_baseline(kind: str, obs_dim: int, cfg: dict, normalize: Callable | None = None) -> nn.Module:
    """`cfg` is the trpo section of the run config (baseline, baseline_time_scale,
    baseline_normalize_obs; value_lr, value_epochs, value_hidden, value_batch_size for the mlp).
    `normalize`: the policy's observation normaliser, used by the linear baseline when
    cfg["baseline_normalize_obs"] (default true)."""
    if kind == "linear":
        return LinearBaseline(obs_dim, time_scale=cfg.get("baseline_time_scale", LINEAR_BASELINE_TIME_SCALE),
                              normalize=normalize if cfg.get("baseline_normalize_obs", True) else None)
    if kind == "mlp":
        return MLPBaseline(obs_dim, hidden=cfg["value_hidden"], lr=cfg["value_lr"],
                           epochs=cfg["value_epochs"], batch_size=cfg["value_batch_size"])
    raise ValueError(f"unknown baseline {kind!r}: linear or mlp")


# ---------------------------------------------------------------- natural gradient pieces
def policy_parameters(policy: GaussianPolicy) -> list[nn.Parameter]:
    """The order of every flat parameter vector here: mean network, then the log-std parameters."""
    return policy.trpo_parameters()


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vector: torch.Tensor, like) -> list[torch.Tensor]:
    out, i = [], 0
    for p in like:
        out.append(vector[i:i + p.numel()].view_as(p))
        i += p.numel()
    return out


def set_flat_params(policy: GaussianPolicy, vector: torch.Tensor) -> None:
    with torch.no_grad():
        for p, v in zip(policy_parameters(policy), unflat(vector, policy_parameters(policy))):
            p.copy_(v)


def conjugate_gradient(Avp, b: torch.Tensor, iters: int, residual_tol: float = 1e-10) -> torch.Tensor:
    """Approximately solve A x = b for symmetric positive definite A given x -> A x: `iters`
    steps, each a no-op once r.r < residual_tol. No host sync: the stopping test is a mask on
    the device, not a Python branch (BREMEN's misc_utils.py:7-24 breaks after the update; the
    iterate is the same)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    zero = torch.zeros((), dtype=b.dtype, device=b.device)
    for _ in range(iters):
        active = rr >= residual_tol
        Ap = Avp(p)
        alpha = torch.where(active, rr / (p @ Ap), zero)
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = r @ r
        p = torch.where(active, r + torch.where(active, rr_new / rr, zero) * p, p)
        rr = torch.where(active, rr_new, rr)
    return x


def fisher_vector_product(policy: GaussianPolicy, obs: torch.Tensor, damping: float,
                          method: str = "gauss_newton", linearization: PolicyLinearization | None = None):
    """v -> (F + damping I) v, F the Hessian at the current parameters of the mean over `obs`
    of KL(pi_current || pi_theta) (the Fisher information of the policy).

    gauss_newton: F = (1/B) sum_s J_s^T M_s J_s with J the Jacobian of the network outputs and
    M_s = 1/sigma(s)^2 on the mean, 2 on a state-dependent log-std output; a global log-std gets
    2 I directly (0 where it sits on its floor); two hand-written Jacobian products per call
    (policy.PolicyLinearization). double_backward: autograd through the gradient of the KL.
    `linearization`: policy.linearization(obs) if the caller already has it.
    """
    params = policy_parameters(policy)
    if method == "gauss_newton":
        lin = linearization if linearization is not None else policy.linearization(obs)
        with torch.no_grad():
            scale = torch.exp(-2.0 * lin.log_std) / obs.shape[0]
            if policy.state_dependent:
                scale = torch.cat([scale, torch.full_like(scale, 2.0 / obs.shape[0])], 1)
            else:
                log_std_curv = 2.0 * (policy.log_std > policy.min_log_std).to(scale.dtype)
        n_lin = sum(p.numel() for p in lin.params)

        def fvp(v):
            with torch.no_grad():
                out = flat(lin.vjp(lin.jvp(unflat(v[:n_lin], lin.params)) * scale))
                if not policy.state_dependent:
                    out = torch.cat([out, log_std_curv * v[n_lin:]])
                return out + damping * v
        return fvp
    if method == "double_backward":
        with torch.no_grad():
            old_mean, old_log_std = policy.distribution(obs)
        kl = policy.kl_from(old_mean, old_log_std, obs)
        grad_kl = flat(torch.autograd.grad(kl, params, create_graph=True))

        def fvp(v):
            hv = torch.autograd.grad(grad_kl @ v, params, retain_graph=True)
            return flat(hv).detach() + damping * v
        return fvp
    raise ValueError(f"unknown fvp method {method!r}: gauss_newton or double_backward")


def weighted_surrogate(policy, obs, act, advantages, weights, old_log_prob) -> torch.Tensor:
    """Eq. 13: mean[ pi_theta(a|s) / pi_old(a|s) * A * w ]; weights None is plain TRPO (w = 1)."""
    return surrogate_from_log_probs(policy.log_prob(obs, act), old_log_prob, advantages, weights)


def surrogate_from_log_probs(log_prob, old_log_prob, advantages, weights) -> torch.Tensor:
    terms = torch.exp(log_prob - old_log_prob) * advantages
    if weights is not None:
        terms = terms * weights
    return terms.mean()


def surrogate_gradient(policy: GaussianPolicy, lin: PolicyLinearization, act, advantages, weights) -> torch.Tensor:
    """The gradient of eq. 13 at theta = theta_old (flat, policy_parameters order), where the ratio
    is 1: g = mean[ w A grad log pi(a|s) ], with d log pi / d mean = (a - mean) / sigma^2 and
    d log pi / d log-std = (a - mean)^2 / sigma^2 - 1 chained through the network by one
    vector-Jacobian product (a global log-std: summed over the batch, 0 where it sits on its
    floor). Equals autograd on weighted_surrogate (tests), without a second forward pass."""
    with torch.no_grad():
        coef = (advantages if weights is None else advantages * weights).unsqueeze(1) / act.shape[0]
        inv_var = torch.exp(-2.0 * lin.log_std)
        err = act - lin.mean
        d_mean = coef * err * inv_var
        d_log_std = coef * (err.pow(2) * inv_var - 1.0)
        if policy.state_dependent:
            return flat(lin.vjp(torch.cat([d_mean, d_log_std], 1)))
        g_log_std = d_log_std.sum(0) * (policy.log_std > policy.min_log_std).to(d_log_std.dtype)
        return flat([*lin.vjp(d_mean), g_log_std])


def line_search(policy, flat_old, fullstep, evaluate, surrogate_before: torch.Tensor,
                expected_improvement: torch.Tensor, *, rule: str, delta: float, steps: int, decay: float):
    """Try theta_old + f_k * fullstep for k = 0..steps-1 and keep the first accepted.

    rule "bremen" (BREMEN's misc_utils.linesearch, libs/misc/misc_utils.py:27-39): f_k = 0.5^k,
    accepted when the actual improvement of the surrogate is positive and more than 0.1 x the
    expected one (expected_improvement x f_k, the first-order model g . step); no KL check.
    rule "kl_backtrack": f_k = decay^k, accepted when the surrogate improves and KL <= delta.
    `evaluate()` -> (surrogate, kl) on the full batch. If none is accepted the old parameters
    are restored. One host sync per candidate tried (the accept test). Returns (accepted,
    step_fraction, backtracks, surrogate, kl): surrogate and kl as 0-dim tensors."""
    if rule not in LINE_SEARCHES:
        raise ValueError(f"trpo.line_search must be one of {LINE_SEARCHES}, got {rule!r}")
    ratio = BREMEN_BACKTRACK if rule == "bremen" else decay
    for k in range(steps):
        fraction = ratio ** k
        set_flat_params(policy, flat_old + fraction * fullstep)
        surrogate, kl = evaluate()
        improvement = surrogate - surrogate_before
        if rule == "bremen":
            ok = (improvement > 0) & (improvement / (expected_improvement * fraction) > BREMEN_ACCEPT_RATIO)
        else:
            ok = (improvement > 0) & (kl <= delta)
        if bool(ok & torch.isfinite(kl)):
            return True, fraction, k, surrogate, kl
    set_flat_params(policy, flat_old)
    return False, 0.0, steps, surrogate_before, torch.zeros_like(surrogate_before)


def trpo_step(policy: GaussianPolicy, obs, act, advantages, weights=None, *, delta: float, cg_iters: int,
              cg_damping: float, line_search_steps: int, line_search_decay: float = 0.5,
              line_search_rule: str = "bremen", fvp_subsample: float = 1.0,
              generator: torch.Generator | None = None, fvp_method: str = "gauss_newton") -> dict:
    """One natural-gradient step on eq. 13 for the samples [B] given (weights None = plain TRPO).

    The step s = sqrt(2 delta / x^T F x) * x with x = F^-1 g by conjugate gradient, so that
    1/2 s^T F s = delta. From 0, CG gives x^T F x = x^T g (the residual is orthogonal to the
    Krylov space that holds x): that spares one Fisher-vector product (BREMEN computes it,
    algos/trpo.py:203); in float32 the two agree to ~0.3 % at damping 0.1.
    Host syncs: one after CG (the finiteness and curvature checks, all at once) and one per
    line-search candidate. Values in the result that are tensors (surrogate_*, kl,
    expected_improvement, policy_std) are 0-dim device tensors: the caller reads them in one sync.
    """
    t0 = time.perf_counter()
    flat_old = flat(policy_parameters(policy)).detach().clone()
    lin = policy.linearization(obs)  # one forward pass: pi_old, and Jacobian products at theta_old
    with torch.no_grad():
        old_mean, old_log_std = lin.mean, lin.log_std
        old_log_prob = gaussian_log_prob(old_mean, old_log_std, act)
        surrogate_before = surrogate_from_log_probs(old_log_prob, old_log_prob, advantages, weights)
        policy_std = old_log_std.exp().mean()
    grad = surrogate_gradient(policy, lin, act, advantages, weights)
    t1 = time.perf_counter()
    result = dict(kl=torch.zeros_like(surrogate_before), surrogate_before=surrogate_before,
                  surrogate_after=surrogate_before, expected_improvement=torch.zeros_like(surrogate_before),
                  policy_std=policy_std, step_fraction=0.0, accepted=False, backtracks=0, time_grad=t1 - t0,
                  time_cg=0.0, time_line_search=0.0)

    if fvp_subsample < 1.0:
        n = max(1, int(round(fvp_subsample * obs.shape[0])))
        dev = generator.device if generator is not None else "cpu"
        idx = torch.randperm(obs.shape[0], generator=generator, device=dev)[:n].to(obs.device)
        del lin  # its [B, hidden] tensors: the subset gets its own
        Fvp = fisher_vector_product(policy, obs[idx], cg_damping, fvp_method)
    else:
        Fvp = fisher_vector_product(policy, obs, cg_damping, fvp_method, linearization=lin)
    stepdir = conjugate_gradient(Fvp, grad, cg_iters)
    shs = 0.5 * (stepdir @ grad)
    finite_grad, nonzero_grad, finite_step, shs_host = torch.stack([
        torch.isfinite(grad).all().to(shs.dtype), (grad.abs().max() > 0).to(shs.dtype),
        torch.isfinite(stepdir).all().to(shs.dtype), shs.detach()]).tolist()   # the one sync of the step
    if not (finite_grad and finite_step and shs_host == shs_host):
        raise FloatingPointError("non-finite surrogate gradient or natural gradient step (phase=policy)")
    if not nonzero_grad:
        return result
    if not shs_host > 0:
        raise FloatingPointError(f"non-positive step curvature s^T F s = {shs_host:.3g} (phase=policy)")
    fullstep = stepdir * torch.sqrt(delta / shs)
    expected_improvement = grad @ fullstep
    t2 = time.perf_counter()

    def evaluate():
        with torch.no_grad():
            mean, log_std = policy.distribution(obs)
            surrogate = surrogate_from_log_probs(gaussian_log_prob(mean, log_std, act), old_log_prob,
                                                 advantages, weights)
            return surrogate, gaussian_kl(old_mean, old_log_std, mean, log_std).mean()

    accepted, fraction, backtracks, surrogate_after, kl = line_search(
        policy, flat_old, fullstep, evaluate, surrogate_before, expected_improvement, rule=line_search_rule,
        delta=delta, steps=line_search_steps, decay=line_search_decay)
    result.update(kl=kl, surrogate_after=surrogate_after, step_fraction=fraction, accepted=accepted,
                  backtracks=backtracks, expected_improvement=expected_improvement,
                  time_cg=t2 - t1, time_line_search=time.perf_counter() - t2)
    return result


# ---------------------------------------------------------------- one TRPO iteration
def bremen_padded_rows(path_end: torch.Tensor, timesteps: torch.Tensor, batch_size: int) -> dict:
    """BREMEN's TRPO batch from the [T, N] output of `imagine(batch_size=...)` (path_end,
    timestep):
    - the collected paths: every path that ended in the T steps, in completion order (step by
      step, lanes in index order: libs/samplers/vectorized_sampler.py:69-94); `collected` [T, N]
      marks their steps (those with an end at or after them in their lane);
    - each path zero-padded to the longest, the [paths x longest] rows flattened and the first
      batch_size kept (vectorized_sampler.py:132-149, algos/trpo.py:167-179): row i is step
      j = i mod longest of path i // longest, real where j < that path's length.
    Returns collected, t and n [batch_size] (the step and lane of each row; t = 0 on padding)
    and real [batch_size] (bool). Two host reads: the path count and the longest path."""
    collected = path_end.flip(0).cumsum(0).flip(0) > 0
    ends = torch.nonzero(path_end)                      # [P, 2] (step, lane), row-major: completion order
    lengths = timesteps[ends[:, 0], ends[:, 1]] + 1
    longest, total = torch.stack([lengths.max(), lengths.sum()]).tolist() if len(ends) else (0, 0)
    if total < batch_size:
        raise ValueError(f"the completed paths hold {total} steps, fewer than batch_size={batch_size}; "
                         f"roll out with imagine(batch_size={batch_size})")
    row = torch.arange(batch_size, device=path_end.device)
    path, j = row // longest, row % longest
    real = j < lengths[path]
    return dict(collected=collected, t=torch.where(real, ends[path, 0] - lengths[path] + 1 + j, 0),
                n=ends[path, 1], real=real)


def policy_update(policy: GaussianPolicy, baseline: nn.Module, rollout: dict, weights=None, *, gamma: float,
                  lam: float, normalize_advantages: bool, delta: float, cg_iters: int, cg_damping: float,
                  line_search_steps: int, line_search_decay: float = 0.5, line_search: str = "bremen",
                  bootstrap_cutoff: bool = False, fvp_subsample: float = 1.0,
                  generator: torch.Generator | None = None, fvp_method: str = "gauss_newton",
                  batch_assembly: str = "full", batch_size: int | None = None) -> dict:
    """One TRPO iteration on imagined rollouts: `rollout` holds [T, N] tensors obs, act, rew,
    next_obs, terminated, alive (optional, default all ones) and timestep (steps since the lane's
    path started; default the step index t); `weights` [T, N] are the U-hat of eq. 12 (None:
    plain TRPO). Returns host floats (one sync for all of them) and the timings.

    batch_assembly (BATCH_ASSEMBLIES): "full": every alive [t, n] step is a sample of the update.
    "bremen_padded": BREMEN's batch of `batch_size` rows from `imagine(batch_size=...)`'s output
    (its path_end, see `bremen_padded_rows`): GAE per collected path, advantages normalised and
    the baseline fitted over all their steps, then the padded rows (obs, act, advantage 0) count
    in the means of the surrogate, the KL and the Fisher-vector products like the real ones."""
    if batch_assembly not in BATCH_ASSEMBLIES:
        raise ValueError(f"trpo.batch_assembly must be one of {BATCH_ASSEMBLIES}, got {batch_assembly!r}")
    padded = batch_assembly == "bremen_padded"
    if padded and (batch_size is None or "path_end" not in rollout or bootstrap_cutoff):
        raise ValueError("batch_assembly=bremen_padded needs batch_size, a rollout from imagine(batch_size=...) "
                         "(its path_end) and bootstrap_cutoff=False")
    t0 = time.perf_counter()
    device = policy.log_std.device
    keys = ("obs", "act", "rew", "next_obs", "terminated", "alive", "timestep", "timesteps", "path_end")
    r = {k: torch.as_tensor(rollout[k], device=device) for k in keys if k in rollout}
    obs, act, rew = r["obs"].float(), r["act"].float(), r["rew"].float()
    T, N = rew.shape
    alive = r["alive"].float() if "alive" in r else None
    timesteps = r.get("timestep", r.get("timesteps"))
    if timesteps is None:
        timesteps = torch.arange(T, device=device).unsqueeze(1).expand(T, N)
    if padded:  # the steps of the collected paths
        rows = bremen_padded_rows(r["path_end"], timesteps, batch_size)
        keep, all_alive = rows["collected"], False
    else:
        keep = alive > 0 if alive is not None else None
        all_alive = keep is None or bool(keep.all())

    def alive_steps(x):  # [T, N, ...] -> [n_alive, ...]; a plain reshape when every step is alive
        return x.reshape(T * N, *x.shape[2:]) if all_alive else x[keep]

    # Values, GAE, value targets and the advantage normalisation in float64, as BREMEN's numpy
    # (libs/samplers/vectorized_sampler.py:115-142). The linear baseline's t^3 term, fitted on short
    # paths, extrapolates to the rare imagined path of 1000 steps; the value targets (A + V) feed that
    # back, and in one medium MUSBO Hopper run they grew to 1e34 within a deployment. float64 carries
    # such a baseline on (as BREMEN's code would); float32 overflowed in the advantages' std.
    with torch.no_grad():
        values = baseline.predict(obs, timesteps).double()
        last_values = (baseline.predict(r["next_obs"][-1].float(), timesteps[-1] + 1).double()
                       if bootstrap_cutoff else None)
        ends = r["path_end"] if padded else r["terminated"]
        adv, returns = gae(rew.double(), values, ends, gamma, lam, last_values=last_values,
                           alive=None if all_alive else alive)
    adv_alive = alive_steps(adv)
    _check_finite("imagined rollout (obs, act or reward of an alive step) or advantages",
                  alive_steps(obs), alive_steps(act), alive_steps(rew), adv_alive)
    if normalize_advantages:
        adv_mean, adv_scale = adv_alive.mean(), adv_alive.std(unbiased=False) + ADV_EPS
        adv_alive = (adv_alive - adv_mean) / adv_scale
    if padded:  # BREMEN's rows: real ones gathered from [T, N], padded ones 0 (obs, act, advantage)
        real, gather = rows["real"], (lambda x: x[rows["t"], rows["n"]])
        batch_obs = torch.where(real[:, None], gather(obs), 0.0)
        batch_act = torch.where(real[:, None], gather(act), 0.0)
        batch_adv = torch.where(real, gather((adv - adv_mean) / adv_scale if normalize_advantages else adv),
                                0.0).float()
        # eq. 12 weights: a real row keeps its label; a padded row gets the label at t = 0 of its
        # lane, which does not matter: its advantage is 0, so its surrogate term and gradient are 0
        w = None if weights is None else gather(torch.as_tensor(weights, device=device).float())
    else:
        batch_obs, batch_act, batch_adv = alive_steps(obs), alive_steps(act), adv_alive.float()
        w = None if weights is None else alive_steps(torch.as_tensor(weights, device=device).float())
    t1 = time.perf_counter()

    stats = trpo_step(policy, batch_obs, batch_act, batch_adv, w, delta=delta, cg_iters=cg_iters,
                      cg_damping=cg_damping, line_search_steps=line_search_steps,
                      line_search_decay=line_search_decay, line_search_rule=line_search,
                      fvp_subsample=fvp_subsample, generator=generator, fvp_method=fvp_method)
    t2 = time.perf_counter()
    ret_alive, val_alive = alive_steps(returns), alive_steps(values)
    explained_variance = 1.0 - (ret_alive - val_alive).var() / ret_alive.var().clamp_min(1e-12)
    baseline.fit(obs, timesteps, returns, None if all_alive else keep, generator=generator)  # padded: in time order
    t3 = time.perf_counter()
    rew_alive = alive_steps(rew)
    device_stats = dict(kl=stats["kl"], surrogate_before=stats["surrogate_before"],
                        surrogate_after=stats["surrogate_after"], expected_improvement=stats["expected_improvement"],
                        policy_std=stats["policy_std"], mean_reward=rew_alive.mean(),
                        mean_weight=(torch.ones(()) if w is None else (w * real).sum() / real.sum() if padded
                                     else w.mean()),
                        explained_variance=explained_variance,
                        n_samples=(real.sum() if padded else torch.tensor(float(rew_alive.numel())) if all_alive
                                   else keep.sum()),
                        padding_share=(~real).sum().double() / batch_size if padded else torch.zeros(()))
    names = list(device_stats)
    host = torch.stack([v.detach().to(device=device, dtype=torch.float64) for v in device_stats.values()]).tolist()
    stats.update(dict(zip(names, host)))
    stats["n_samples"] = int(stats["n_samples"])
    stats.update(time_values_gae=t1 - t0, time_baseline_fit=t3 - t2, time_total=t3 - t0)
    return stats
