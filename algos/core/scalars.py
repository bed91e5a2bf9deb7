"""Per-iteration diagnostics of a run: one long table `scalars.csv` with the columns
deployment, phase, step, name, value, appended and flushed as the run goes.

Every part of an algorithm records what it did through the `Scalars` it is handed
(`algo.scalars`): losses, labels, KL, live imagined samples, imagined returns, ... The run
(algos/run.py) gives each algorithm a file-backed one and sets the deployment; an algorithm
built alone (tests, bench) keeps an in-memory one whose `rows` can be read back.

Values are host floats: record once per iteration or epoch, never inside a device loop (each
`float()` of a CUDA tensor is a host sync)."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

COLUMNS = ("deployment", "phase", "step", "name", "value")
QUANTILES = (10, 50, 90)


class Scalars:
    """`add(phase, name, value, step)`; `distribution(phase, name, values, step)` records the
    mean and 10/50/90 % quantiles (and, with `bounds`, the share of values within 0.01 of each
    bound). `path`: append to this CSV (created with its header); `tensorboard_dir`: mirror every
    scalar to TensorBoard (needs the `tensorboard` extra)."""

    def __init__(self, path: Path | None = None, tensorboard_dir: Path | None = None):
        self.deployment = self.deployment_rows = 0
        self.rows: list[dict] = []
        self.path = Path(path) if path is not None else None
        self._file = None
        self._tb = None
        if self.path is not None:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._file = open(self.path, "a", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS, lineterminator="\n")
            if new:
                self._writer.writeheader()
                self._file.flush()
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:  # the optional extra is missing
                raise RuntimeError("--track tensorboard needs the tensorboard package: "
                                   "pip install -e '.[track]' (or drop --track)") from err
            self._tb = SummaryWriter(log_dir=str(tensorboard_dir))

    def set_deployment(self, deployment: int) -> None:
        self.deployment = int(deployment)
        self.deployment_rows = 0  # rows of this deployment in the file (a mid-phase checkpoint keeps the count)

    def add(self, phase: str, name: str, value, step: int = 0) -> None:
        value = float(value)
        row = {"deployment": self.deployment, "phase": phase, "step": int(step), "name": name, "value": value}
        self.rows.append(row)
        self.deployment_rows += 1
        if self._file is not None:
            self._writer.writerow(row)
            self._file.flush()
        if self._tb is not None and math.isfinite(value):
            # one TensorBoard curve per (phase, name); x = deployment-major global step
            self._tb.add_scalar(f"{phase}/{name}", value, global_step=self.deployment * 1_000_000 + int(step))

    def add_many(self, phase: str, values: dict, step: int = 0) -> None:
        for name, value in values.items():
            self.add(phase, name, value, step)

    def distribution(self, phase: str, name: str, values, step: int = 0, bounds: tuple | None = None) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.size == 0:
            return
        self.add(phase, f"{name}_mean", values.mean(), step)
        for q, v in zip(QUANTILES, np.percentile(values, QUANTILES)):
            self.add(phase, f"{name}_p{q}", v, step)
        for bound in bounds or ():
            self.add(phase, f"{name}_share_at_{bound:g}", np.mean(np.abs(values - bound) <= 0.01), step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def trimmed_scalars(text: str, through_deployment: int, next_rows: int = 0) -> tuple[str, int]:
    """The text of scalars.csv keeping the rows of deployments <= through_deployment (a resumed
    run redoes the rest) and the first `next_rows` rows of the deployment after it (a resume
    inside it: those written before its mid-phase checkpoint), and the number of torn or
    malformed rows dropped: a last line without its newline (a write cut by a kill), a row
    without five fields, or one whose deployment, step or value is not a number. The kept rows
    are copied as they were."""
    lines = text.splitlines(keepends=True)
    dropped = 0
    if lines and not lines[-1].endswith("\n"):
        lines, dropped = lines[:-1], 1
    kept = []
    for fields in csv.reader(lines):
        if fields == list(COLUMNS):
            continue
        deployment = _deployment_of(fields)
        if deployment is None:
            dropped += 1
        elif deployment <= through_deployment:
            kept.append(fields)
        elif deployment == through_deployment + 1 and next_rows > 0:
            kept.append(fields)
            next_rows -= 1
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows([COLUMNS, *kept])
    return buf.getvalue(), dropped


def _deployment_of(fields: list[str]) -> int | None:
    """The deployment of a well-formed row (deployment, phase, step, name, value), else None."""
    try:
        deployment, phase, step, name, value = fields
        int(step), float(value)
        return int(deployment) if phase and name else None
    except ValueError:
        return None
