"""Uncertainty-weighted TRPO (MUSBO eq. 13; w = 1 gives BREMEN's plain TRPO), GAE and baselines.

    max_theta  E[ pi_theta(a|s) / pi_old(a|s) * A(s, a) * w(s, a) ]   s.t.  E[ KL(pi_old || pi_theta) ] <= delta

One call of `policy_update` is one TRPO iteration of Algorithm 1 (step 5): values from the
baseline, GAE, normalised advantages, one natural-gradient step (conjugate gradient on
Fisher-vector products, step scaled to the KL radius, backtracking line search), baseline refit.

Choices (see docs/paper_to_code.md):
- The surrogate and the KL are means over the alive samples of the rollout; the weights
  multiply the surrogate only, never the KL constraint.
- Fisher-vector products use the Gauss-Newton form F = J^T M J of the mean KL (exact for a
  Gaussian policy: M = 1/sigma^2 on the mean, 2 on each log-std), optionally on a random subset
  of `fvp_subsample` x B samples (as OpenAI baselines' TRPO does with every 5th sample);
  `fvp_method="double_backward"` is the textbook Hessian of the KL, kept as a reference.
- The baseline is fitted to the GAE lambda-returns A + V (bootstrapped, so that truncated
  imagined rollouts of 250 steps do not read as if the episode ended).
"""
from __future__ import annotations

import time

import torch
from torch import nn

from algos.core.policy import MIN_OBS_STD, GaussianPolicy, MeanLinearization, gaussian_kl, gaussian_log_prob

# BREMEN's linear baseline (rllab's LinearFeatureBaseline): observations clipped to +-10 before
# the features, ridge coefficient 1e-5 (raised x10 while the solution is not finite).
LINEAR_BASELINE_OBS_CLIP = 10.0
LINEAR_BASELINE_REG = 1e-5
# t in the features is the step index divided by this (the 1000-step episodes of the envs),
# so t, t^2, t^3 stay within [0, 1].
TIME_SCALE = 1000.0
ADV_EPS = 1e-8


def _check_finite(name: str, *tensors: torch.Tensor) -> None:
    for t in tensors:
        if not bool(torch.isfinite(t).all()):
            raise FloatingPointError(f"non-finite {name} (phase=policy)")


# ---------------------------------------------------------------- GAE
def gae(rew, values, next_values, terminated, alive, gamma: float, lam: float):
    """Generalised advantage estimation over rollouts [T, N].

    delta_t = r_t + gamma * V(s'_t) * (1 - terminated_t) - V(s_t); A_t = delta_t + gamma * lam * A_{t+1}
    unless step t terminated. The last step (t = T-1) thus bootstraps with next_values unless
    terminated. Steps with alive = 0 (a slot whose rollout has ended) have delta = 0, hence A = 0,
    and contribute nothing; their values may be garbage (NaN): `where`, not multiplication.
    Returns (A, A + V), both 0 on dead steps.
    """
    alive_b = alive > 0
    terminated = terminated.bool()
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    bootstrap = torch.where(terminated, zero, next_values)
    delta = torch.where(alive_b, rew + gamma * bootstrap - values, zero)
    carry_on = (~terminated).to(values.dtype)
    adv = torch.zeros_like(values)
    next_adv = torch.zeros_like(values[0])
    for t in reversed(range(rew.shape[0])):
        next_adv = delta[t] + gamma * lam * carry_on[t] * next_adv
        adv[t] = next_adv
    returns = torch.where(alive_b, adv + values, zero)
    return adv, returns


# ---------------------------------------------------------------- baselines
class LinearBaseline(nn.Module):
    """BREMEN's value baseline: V(s, t) = [s, s^2, t, t^2, t^3, 1] . c, c by ridge regression
    on the returns of the alive steps. Predicts 0 before its first fit."""

    def __init__(self, obs_dim: int, reg: float = LINEAR_BASELINE_REG, time_scale: float = TIME_SCALE):
        super().__init__()
        self.reg, self.time_scale = reg, time_scale
        self.register_buffer("coef", torch.zeros(2 * obs_dim + 4, dtype=torch.float64))

    def features(self, obs: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        s = obs.to(torch.float64).clamp(-LINEAR_BASELINE_OBS_CLIP, LINEAR_BASELINE_OBS_CLIP)
        t = (timesteps.to(torch.float64) / self.time_scale).unsqueeze(-1)
        return torch.cat([s, s * s, t, t * t, t * t * t, torch.ones_like(t)], -1)

    def fit(self, obs, timesteps, returns, mask, generator=None) -> None:
        keep = mask > 0
        x = self.features(obs[keep], timesteps[keep])
        y = returns[keep].to(torch.float64)
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

    def fit(self, obs, timesteps, returns, mask, generator=None) -> None:
        keep = mask > 0
        x = self._raw_inputs(obs[keep], timesteps[keep])
        y = returns[keep].to(obs.dtype)
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


def make_baseline(kind: str, obs_dim: int, cfg: dict) -> nn.Module:
    """`cfg` is the trpo section of the run config (baseline, value_lr, value_epochs, and the
    value_hidden, value_batch_size)."""
    if kind == "linear":
        return LinearBaseline(obs_dim)
    if kind == "mlp":
        return MLPBaseline(obs_dim, hidden=cfg["value_hidden"], lr=cfg["value_lr"],
                           epochs=cfg["value_epochs"], batch_size=cfg["value_batch_size"])
    raise ValueError(f"unknown baseline {kind!r}: linear or mlp")


# ---------------------------------------------------------------- natural gradient pieces
def policy_parameters(policy: GaussianPolicy) -> list[nn.Parameter]:
    """The order of every flat parameter vector here: mean network, then log-std."""
    return [*policy.mean_parameters(), policy.log_std]


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
    """Approximately solve A x = b for symmetric positive definite A given x -> A x."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr < residual_tol:
            break
        Ap = Avp(p)
        alpha = rr / (p @ Ap)
        x += alpha * p
        r -= alpha * Ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def fisher_vector_product(policy: GaussianPolicy, obs: torch.Tensor, damping: float,
                          method: str = "gauss_newton", linearization: MeanLinearization | None = None):
    """v -> (F + damping I) v, F the Hessian at the current parameters of the mean over `obs`
    of KL(pi_current || pi_theta) (the Fisher information of the policy).

    gauss_newton: F = (1/B) sum_s J_s^T M J_s with J the Jacobian of the tanh mean and
    M = diag(1/sigma^2), plus 2 I on the log-std (0 where it sits on its floor); two hand-written
    Jacobian products per call (policy.MeanLinearization).
    double_backward: autograd through the gradient of the KL.
    `linearization`: policy.mean_linearization(obs) if the caller already has it.
    """
    params = policy_parameters(policy)
    if method == "gauss_newton":
        lin = linearization if linearization is not None else policy.mean_linearization(obs)
        with torch.no_grad():
            log_std = policy.clamped_log_std()
            mean_scale = torch.exp(-2.0 * log_std) / obs.shape[0]
            log_std_curv = 2.0 * (policy.log_std > policy.min_log_std).to(log_std.dtype)
        n_mean = sum(p.numel() for p in params[:-1])

        def fvp(v):
            with torch.no_grad():
                jv = lin.jvp(unflat(v[:n_mean], params[:-1]))
                out = flat(lin.vjp(jv * mean_scale))
                return torch.cat([out, log_std_curv * v[n_mean:]]) + damping * v
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


def surrogate_gradient(policy: GaussianPolicy, lin: MeanLinearization, act, advantages, weights) -> torch.Tensor:
    """The gradient of eq. 13 at theta = theta_old (flat, policy_parameters order), where the ratio
    is 1: g = mean[ w A grad log pi(a|s) ], with d log pi / d mean = (a - mean) / sigma^2 chained
    through the mean network by one vector-Jacobian product, and d log pi / d log-std =
    (a - mean)^2 / sigma^2 - 1 (0 where the log-std sits on its floor). Equals autograd on
    weighted_surrogate (tests), without a second forward pass and its graph."""
    with torch.no_grad():
        coef = (advantages if weights is None else advantages * weights).unsqueeze(1) / act.shape[0]
        log_std = policy.clamped_log_std()
        inv_var = torch.exp(-2.0 * log_std)
        err = act - lin.mean
        g_mean = lin.vjp(coef * err * inv_var)
        g_log_std = (coef * (err.pow(2) * inv_var - 1.0)).sum(0)
        g_log_std = g_log_std * (policy.log_std > policy.min_log_std).to(g_log_std.dtype)
        return flat([*g_mean, g_log_std])


def backtracking_line_search(policy, flat_old, fullstep, evaluate, surrogate_before: float, delta: float,
                             steps: int, decay: float):
    """Try theta_old + decay^k * fullstep, k = 0..steps-1; keep the first that improves the
    surrogate with KL <= delta (both from `evaluate()` on the full batch). If none does, the old
    parameters are restored. Returns (accepted, step_fraction, surrogate, kl)."""
    for k in range(steps):
        fraction = decay ** k
        set_flat_params(policy, flat_old + fraction * fullstep)
        surrogate, kl = evaluate()
        if (torch.isfinite(surrogate) and torch.isfinite(kl) and surrogate > surrogate_before
                and kl <= delta):
            return True, fraction, float(surrogate), float(kl)
    set_flat_params(policy, flat_old)
    return False, 0.0, surrogate_before, 0.0


def trpo_step(policy: GaussianPolicy, obs, act, advantages, weights=None, *, delta: float, cg_iters: int,
              cg_damping: float, line_search_steps: int, line_search_decay: float = 0.5,
              fvp_subsample: float = 1.0, generator: torch.Generator | None = None,
              fvp_method: str = "gauss_newton") -> dict:
    """One natural-gradient step on eq. 13 for the samples [B] given (weights None = plain TRPO).

    The step s = sqrt(2 delta / x^T F x) * x with x = F^-1 g by conjugate gradient, so that
    1/2 s^T F s = delta. From 0, CG gives x^T F x = x^T g (the residual is orthogonal to the
    Krylov space that holds x): that spares one Fisher-vector product; in float32 the two agree
    to ~0.3 % at damping 0.1 (~3 % at 1e-3), and the line search checks the true KL anyway.
    The acceptance rule is strict (KL <= delta): as the true KL of the full step is often a few
    % above its quadratic model, the line search then takes the half step (KL ~ delta / 4).
    """
    t0 = time.perf_counter()
    flat_old = flat(policy_parameters(policy)).detach().clone()
    lin = policy.mean_linearization(obs)  # one forward pass: pi_old, and Jacobian products at theta_old
    with torch.no_grad():
        old_mean, old_log_std = lin.mean, policy.clamped_log_std().expand_as(lin.mean)
        old_log_prob = gaussian_log_prob(old_mean, old_log_std, act)
        surrogate_before = float(surrogate_from_log_probs(old_log_prob, old_log_prob, advantages, weights).detach())
    grad = surrogate_gradient(policy, lin, act, advantages, weights)
    _check_finite("surrogate gradient", grad, torch.tensor(surrogate_before))
    t1 = time.perf_counter()
    result = dict(kl=0.0, surrogate_before=surrogate_before, surrogate_after=surrogate_before,
                  step_fraction=0.0, accepted=False, time_grad=t1 - t0, time_cg=0.0, time_line_search=0.0)
    if not bool(grad.abs().max() > 0):
        return result

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
    _check_finite("natural gradient step", stepdir, shs)
    if not bool(shs > 0):
        raise FloatingPointError(f"non-positive step curvature s^T F s = {float(shs):.3g} (phase=policy)")
    fullstep = stepdir * torch.sqrt(delta / shs)
    t2 = time.perf_counter()

    def evaluate():
        with torch.no_grad():
            mean, log_std = policy.distribution(obs)
            surrogate = surrogate_from_log_probs(gaussian_log_prob(mean, log_std, act), old_log_prob,
                                                 advantages, weights)
            return surrogate, gaussian_kl(old_mean, old_log_std, mean, log_std).mean()

    accepted, fraction, surrogate_after, kl = backtracking_line_search(
        policy, flat_old, fullstep, evaluate, surrogate_before, delta, line_search_steps, line_search_decay)
    result.update(kl=kl, surrogate_after=surrogate_after, step_fraction=fraction, accepted=accepted,
                  time_cg=t2 - t1, time_line_search=time.perf_counter() - t2)
    return result


# ---------------------------------------------------------------- one TRPO iteration
def policy_update(policy: GaussianPolicy, baseline: nn.Module, rollout: dict, weights=None, *, gamma: float,
                  lam: float, normalize_advantages: bool, delta: float, cg_iters: int, cg_damping: float,
                  line_search_steps: int, line_search_decay: float = 0.5, fvp_subsample: float = 1.0,
                  generator: torch.Generator | None = None, fvp_method: str = "gauss_newton") -> dict:
    """One TRPO iteration on imagined rollouts: `rollout` holds [T, N] tensors obs, act, rew,
    next_obs, terminated, alive (and optionally timesteps, default the step index t); `weights`
    [T, N] are the U-hat of eq. 12 (None: plain TRPO)."""
    t0 = time.perf_counter()
    device = policy.log_std.device
    keys = ("obs", "act", "rew", "next_obs", "terminated", "alive", "timesteps")
    r = {k: torch.as_tensor(rollout[k], device=device) for k in keys if k in rollout}
    obs, act, rew = r["obs"].float(), r["act"].float(), r["rew"].float()
    T, N = rew.shape
    alive = r["alive"].float()
    keep = alive > 0
    if "timesteps" in r:
        timesteps = r["timesteps"]
    else:
        timesteps = torch.arange(T, device=device).unsqueeze(1).expand(T, N)
    all_alive = bool(keep.all())

    def alive_steps(x):  # [T, N, ...] -> [n_alive, ...]; a plain reshape when every step is alive
        return x.reshape(T * N, *x.shape[2:]) if all_alive else x[keep]

    _check_finite("imagined rollout (obs, act or reward of an alive step)",
                  alive_steps(obs), alive_steps(act), alive_steps(rew))
    with torch.no_grad():
        values = baseline.predict(obs, timesteps)
        next_values = baseline.predict(r["next_obs"].float(), timesteps + 1)
        adv, returns = gae(rew, values, next_values, r["terminated"], alive, gamma, lam)
    adv_alive = alive_steps(adv)
    _check_finite("advantages", adv_alive)
    if normalize_advantages:
        adv_alive = (adv_alive - adv_alive.mean()) / (adv_alive.std(unbiased=False) + ADV_EPS)
    w = None if weights is None else alive_steps(torch.as_tensor(weights, device=device).float())
    t1 = time.perf_counter()

    stats = trpo_step(policy, alive_steps(obs), alive_steps(act), adv_alive, w, delta=delta, cg_iters=cg_iters,
                      cg_damping=cg_damping, line_search_steps=line_search_steps,
                      line_search_decay=line_search_decay, fvp_subsample=fvp_subsample, generator=generator,
                      fvp_method=fvp_method)
    t2 = time.perf_counter()
    ret_alive, val_alive = alive_steps(returns), alive_steps(values)
    explained_variance = float(1.0 - (ret_alive - val_alive).var() / ret_alive.var().clamp_min(1e-12))
    baseline.fit(obs, timesteps, returns, alive, generator=generator)
    t3 = time.perf_counter()
    stats.update(n_samples=int(keep.sum()), mean_reward=float(alive_steps(rew).mean()),
                 mean_weight=1.0 if w is None else float(w.mean()), explained_variance=explained_variance,
                 time_values_gae=t1 - t0, time_baseline_fit=t3 - t2, time_total=t3 - t0)
    return stats
