"""The trainer of the dynamics ensembles, apart from the model (as mbrl-lib splits them), and
the stopping rules each algorithm passes in.

- `StoppingRule`: when a fit validates, when it stops and which weights it keeps. Named rules:
  `Patience(n)` (MUSBO: validate every epoch, stop after n epochs without improvement),
  `BREMEN_STOPPING` (model/dynamics.py:195-214 of matsuolab/BREMEN: up to 200 epochs,
  validated every 5, a model stops once 20 epochs passed since its best, last weights kept),
  `MOPO_STOPPING` (mopo/models/bnn.py:309-331, 411-414, 478 of tianheyu927/mopo: validated every
  epoch, stop once more than 5 epochs passed without a 1 % improvement of any member, no epoch
  cap, each member's best weights restored).
- `EarlyStopping`: the state of one fit under a rule (pure numpy: testable on scripted losses).
- `ModelTrainer`: fits a `DynamicsEnsemble` on a training split and validates on a holdout
  split (the split is the caller's: `algos.core.dataset.DeploymentDataset.split`).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from algos.config import KEEP_WEIGHTS
from algos.core import preempt
from algos.core.ensemble import DynamicsEnsemble, adam, as_tensor, per_layer

# weight_decay="per_train_sample": BREMEN's L2, (1 / N_train) * sum ||W||^2 / 2 over the hidden
# kernels only (model/dynamics.py:25-31 sums tf.nn.l2_loss of the hidden "kernel"s, :178 scales
# it by `coeff`, which :191 sets to 1 / len(train_data), the number of training samples).
PER_TRAIN_SAMPLE = "per_train_sample"


@dataclass(frozen=True)
class StoppingRule:
    """patience: stop once this many epochs passed since the last improvement (checked at
    validation epochs); validate_every: validate after epochs 1, 1 + k, 1 + 2k, ...;
    max_epochs: None = no cap; min_improvement: an improvement must beat best * (1 - this);
    keep: "best" restores each member's best weights, "last" keeps the weights it stopped with;
    per_member: each member stops on its own (BREMEN fits its models one after another),
    otherwise the ensemble stops together (an improvement of any member resets the count).
    The first validation always improves (the best starts at +inf, as both official codes)."""
    patience: int
    validate_every: int = 1
    max_epochs: int | None = 200
    min_improvement: float = 0.0
    keep: str = "best"
    per_member: bool = False

    def __post_init__(self):
        if self.keep not in KEEP_WEIGHTS:
            raise ValueError(f"keep must be one of {KEEP_WEIGHTS}, got {self.keep!r}")
        if self.patience < 1 or self.validate_every < 1 or (self.max_epochs is not None and self.max_epochs < 1):
            raise ValueError(f"patience, validate_every and max_epochs must be >= 1: {self}")

    def validates(self, epoch: int) -> bool:
        """BREMEN validates when its 0-based epoch % 5 == 0, i.e. after 1-based epochs 1, 6, 11, ..."""
        return (epoch - 1) % self.validate_every == 0


def Patience(epochs: int, max_epochs: int | None = 200, keep: str = "last") -> StoppingRule:  # noqa: N802
    """MUSBO (appendix F): validated every epoch, stop after `epochs` epochs without improvement.
    What the paper leaves open follows BREMEN's code: each member on its own, last weights kept,
    at most 200 epochs."""
    return StoppingRule(patience=epochs, max_epochs=max_epochs, keep=keep, per_member=True)


BREMEN_STOPPING = StoppingRule(patience=20, validate_every=5, max_epochs=200, keep="last", per_member=True)
MOPO_STOPPING = StoppingRule(patience=6, max_epochs=None, min_improvement=0.01, keep="best")


class EarlyStopping:
    """One fit's bookkeeping under `rule` for `members` members; `update(epoch, val)` after every
    validation returns (improved [M], newly stopped [M]); `done(epoch)` says the fit is over."""

    def __init__(self, rule: StoppingRule, members: int):
        self.rule, self.members = rule, members
        self.best = np.full(members, np.inf)
        self.best_epoch = np.zeros(members, dtype=int)
        self.last_improvement = 0                      # any member, for ensemble-level rules
        self.stopped_at = np.zeros(members, dtype=int)  # 0: still training

    def update(self, epoch: int, val: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        val = np.asarray(val, dtype=float)
        active = self.stopped_at == 0
        improved = active & (val < self.best * (1.0 - self.rule.min_improvement))
        self.best[improved], self.best_epoch[improved] = val[improved], epoch
        if improved.any():
            self.last_improvement = epoch
        since = epoch - (self.best_epoch if self.rule.per_member else self.last_improvement)
        stop = active & (since >= self.rule.patience)
        self.stopped_at[stop] = epoch
        return improved, stop

    def done(self, epoch: int) -> bool:
        capped = self.rule.max_epochs is not None and epoch >= self.rule.max_epochs
        return capped or bool((self.stopped_at > 0).all())

    def state_dict(self) -> dict:
        """The bookkeeping as plain lists (a mid-phase checkpoint, algos/core/preempt.py)."""
        return {"best": self.best.tolist(), "best_epoch": self.best_epoch.tolist(),
                "last_improvement": self.last_improvement, "stopped_at": self.stopped_at.tolist()}

    def load_state_dict(self, d: dict) -> None:
        self.best, self.best_epoch = np.array(d["best"], float), np.array(d["best_epoch"], int)
        self.last_improvement, self.stopped_at = d["last_improvement"], np.array(d["stopped_at"], int)


def member_rows(members: int, n: int, bootstrap: bool, generator: torch.Generator | None) -> torch.Tensor:
    """[members, n] training rows of each member: a bootstrap resample (with replacement, MOPO's
    bnn.py:405) per member, or every row once."""
    dev = generator.device if generator is not None else torch.device("cpu")
    if bootstrap:
        return torch.randint(n, (members, n), generator=generator, device=dev)
    return torch.arange(n, device=dev).expand(members, n)


def hidden_l2_per_train_sample(n_layers: int, n_train: int) -> list[float]:
    """BREMEN's decays per layer: 1 / N_train on every hidden kernel, 0 on the output layer."""
    return [1.0 / n_train] * (n_layers - 1) + [0.0]


class ModelTrainer:
    """Adam on the summed per-member losses (MSE, eq. 8, or Gaussian NLL, eq. 10), plus the L2
    penalty and MOPO's log-variance bound penalty.

    weight_decay: a float (every layer), one float per layer (MOPO), or "per_train_sample"
    (BREMEN). bootstrap: each member trains on its own resample (with replacement) of the
    training rows, drawn once per fit (MOPO's bnn.py:405); otherwise every member sees every row,
    in its own order. refit_normalizers: the input (and target) standardisation is refitted on
    the training split at every fit (BREMEN: utils.py:40, MOPO: bnn.py:403); the first fit always
    fits it."""

    def __init__(self, lr: float, batch_size: int, weight_decay: float | Sequence[float] | str = 0.0,
                 bound_penalty: float = 0.0, bootstrap: bool = False, refit_normalizers: bool = True,
                 bf16: bool = False):
        if isinstance(weight_decay, str) and weight_decay != PER_TRAIN_SAMPLE:
            raise ValueError(f"weight_decay must be a number, a list or {PER_TRAIN_SAMPLE!r}, got {weight_decay!r}")
        self.lr, self.batch_size, self.weight_decay = lr, batch_size, weight_decay
        self.bound_penalty, self.bootstrap = bound_penalty, bootstrap
        self.refit_normalizers, self.bf16 = refit_normalizers, bf16

    def fit(self, model: DynamicsEnsemble, train: dict, holdout: dict | None, stopping: StoppingRule,
            generator: torch.Generator | None = None, scalars=None, phase: str = "model",
            n_elites: int | None = None) -> dict:
        """Fit `model` on `train` (dict of obs, act, next_obs[, rew]), validating on `holdout`
        (the training data when None or empty) with the per-member MSE of its targets.

        Records to `scalars` (phase, step = epoch): `train_loss` each epoch, `holdout_mse_m{k}`
        each validation, and `epochs` (step 0) at the end. Returns {"epochs", "best_val",
        "best_epoch", "stopped_at", "val_loss" (per validation), "train_loss", "elites",
        "n_train", "n_holdout"}."""
        dev = model.device
        x_raw, y_raw = _inputs_targets(model, train, dev)
        if self.refit_normalizers or not bool(model.normalizers_fitted):
            model.fit_normalizers(x_raw, y_raw)
        x_train, y_train = model.input_norm.normalize(x_raw), model.target_norm.normalize(y_raw)
        n_train, M = x_train.shape[0], model.members
        if holdout is not None and len(holdout["obs"]) > 0:
            hx, hy = _inputs_targets(model, holdout, dev)
            x_val, y_val = model.input_norm.normalize(hx), model.target_norm.normalize(hy)
        else:
            x_val, y_val = x_train, y_train

        n_layers = len(model.net.layers)
        decays = (hidden_l2_per_train_sample(n_layers, n_train) if self.weight_decay == PER_TRAIN_SAMPLE
                  else per_layer(self.weight_decay, n_layers))
        optim = adam(list(model.parameters()), self.lr)
        member_params = list(model.net.layers.parameters())   # [M, ...]: snapshotted per member
        snapshot = [p.detach().clone() for p in member_params]
        gen_device = generator.device if generator is not None else torch.device("cpu")
        rows = member_rows(M, n_train, self.bootstrap, generator)

        state = EarlyStopping(stopping, M)
        val_history, train_history = [], []
        epoch = 0
        model.train()
        loop = preempt.loop(f"{phase}_fit", "epoch", generator)  # a stop saves the epoch (algos/core/preempt.py)
        if loop.finished:
            return loop.result
        if loop.saved is not None:
            epoch, train_history, val_history = _load_fit(loop.saved, optim, snapshot, state)
        while not state.done(epoch):
            loop.poll(epoch + 1, lambda: _fit_state(epoch, train_history, val_history, optim, snapshot, state))
            epoch += 1
            # each member its own order of its rows: [M, n_train]
            order = torch.gather(rows, 1, torch.argsort(torch.rand(M, n_train, generator=generator,
                                                                   device=gen_device), dim=1)).to(dev)
            mean_loss = self._epoch(model, optim, x_train, y_train, order, decays)
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f"non-finite training loss {mean_loss} in epoch {epoch} (phase={phase}, "
                                         f"{'NLL' if model.probabilistic else 'MSE'}): lower the lr or check the data")
            train_history.append(mean_loss)
            if scalars is not None:
                scalars.add(phase, "train_loss", mean_loss, epoch)
            if not stopping.validates(epoch):
                continue
            val = model.holdout_mse(x_val, y_val).tolist()
            val_history.append(val)
            if scalars is not None:
                scalars.add_many(phase, {f"holdout_mse_m{k}": v for k, v in enumerate(val)}, epoch)
            improved, stopped = state.update(epoch, val)
            take = improved if stopping.keep == "best" else stopped
            if take.any():
                mask = torch.as_tensor(take, device=dev)
                with torch.no_grad():
                    for p, s in zip(member_params, snapshot):
                        s[mask] = p[mask]
            if sys.stderr.isatty():
                print(f"[{phase}] epoch {epoch} train {mean_loss:.5f} val {[round(v, 5) for v in val]}", file=sys.stderr)

        # keep="best": every member back to its best; keep="last": members that stopped early back
        # to the weights they stopped with (the others end with the last epoch's weights)
        restore = (np.ones(M, bool) if stopping.keep == "best" else state.stopped_at > 0)
        mask = torch.as_tensor(restore, device=dev)
        with torch.no_grad():
            for p, s in zip(member_params, snapshot):
                p[mask] = s[mask]
        model.eval()
        final = model.holdout_mse(x_val, y_val)
        if n_elites is not None:
            # elites by the holdout MSE of the weights kept (MOPO's bnn.py:478-491, after _set_state)
            model.elites = torch.argsort(final)[:n_elites].to(model.elites.device)
        if scalars is not None:
            scalars.add(phase, "epochs", epoch, 0)
        return loop.done({"epochs": epoch, "best_val": state.best.tolist(), "best_epoch": state.best_epoch.tolist(),
                          "stopped_at": state.stopped_at.tolist(), "final_val": final.tolist(), "val_loss": val_history,
                          "train_loss": train_history, "elites": model.elites.tolist(), "n_train": n_train,
                          "n_holdout": 0 if holdout is None else len(holdout["obs"])})

    def _epoch(self, model: DynamicsEnsemble, optim: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               order: torch.Tensor, decays: list[float]) -> float:
        M, n = order.shape
        total = x.new_zeros(())
        batches = 0
        for start in range(0, n, self.batch_size):
            idx = order[:, start:start + self.batch_size].reshape(-1)
            # index_select: several times faster than x[idx] with a 2-D index on CPU
            xb = x.index_select(0, idx).view(M, -1, x.shape[1])
            yb = y.index_select(0, idx).view(M, -1, y.shape[1])
            data_loss = model.data_loss(xb, yb, self.bf16)
            loss = data_loss.sum()
            if any(decays):
                loss = loss + model.net.weight_decay_penalty(decays)
            if model.probabilistic and self.bound_penalty:
                loss = loss + self.bound_penalty * (model.net.max_logvar.sum() - model.net.min_logvar.sum())
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            total += data_loss.detach().mean()
            batches += 1
        return (total / max(batches, 1)).item()  # one sync per epoch


def _fit_state(epoch: int, train_history: list, val_history: list, optim, snapshot: list, state: EarlyStopping) -> dict:
    """What a fit needs to go on after `epoch` epochs (the model's weights are the algorithm's)."""
    return {"epoch": epoch, "train_history": list(train_history), "val_history": list(val_history),
            "optim": optim.state_dict(), "snapshot": [s.clone() for s in snapshot], "stopping": state.state_dict()}


def _load_fit(saved: dict, optim, snapshot: list, state: EarlyStopping) -> tuple[int, list, list]:
    optim.load_state_dict(saved["optim"])
    with torch.no_grad():
        for s, value in zip(snapshot, saved["snapshot"]):
            s.copy_(value)
    state.load_state_dict(saved["stopping"])
    return saved["epoch"], saved["train_history"], saved["val_history"]


def _inputs_targets(model: DynamicsEnsemble, data: dict, dev) -> tuple[torch.Tensor, torch.Tensor]:
    obs, act, nxt = (as_tensor(data[k], dev) for k in ("obs", "act", "next_obs"))
    rew = as_tensor(data["rew"], dev) if model.reward_target else None
    return torch.cat([obs, act], dim=-1), model.targets(obs, nxt, rew)


# ---- what MUSBO and BREMEN call: one ensemble from a config section, fitted on the dataset ----
def make_ensemble(section: dict, obs_dim: int, act_dim: int, device, probabilistic: bool) -> DynamicsEnsemble:
    """M-hat-theta (deterministic, eq. 8) or the labeler P-hat-phi (probabilistic, eq. 10)."""
    return DynamicsEnsemble(obs_dim, act_dim, members=section["members"], hidden=section["hidden"],
                            probabilistic=probabilistic).to(device)


def fit_ensemble(model: DynamicsEnsemble, dataset, section: dict, generator: torch.Generator,
                 stopping: StoppingRule, weight_decay: float | Sequence[float] | str = 0.0, scalars=None,
                 phase: str = "model") -> dict:
    """Fit on D_all with the holdout of `section` (`holdout_split`, `holdout`: BREMEN's last 15 %
    of each batch by default) and the algorithm's stopping rule; lr and batch size of `section`."""
    train, holdout = dataset.split(section["holdout_split"], section["holdout"], generator)
    trainer = ModelTrainer(lr=section["lr"], batch_size=section["batch_size"], weight_decay=weight_decay)
    return trainer.fit(model, train, holdout, stopping, generator, scalars=scalars, phase=phase)
