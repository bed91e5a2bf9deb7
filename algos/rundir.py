"""The run directory's promises, one place each (algos/run.py only calls these).

- Identity: `identity.json` (algo, env, budget, seed, profile, config hash) is the first file a
  run writes, atomically. Any other run is refused before it writes anything; with
  `replace_stale` (the workflow's reruns) the old contents are moved, never deleted, into
  `stale-<oldhash12>/` and the new run starts at deployment 1.
- Lock: `run.lock`, held with fcntl for the life of the run; it holds the holder's pid. A second
  process is refused at once, or with `lock_wait` waits that many seconds for it (one line).
- Atomic writes: a temp file unique to the process, fsync, rename; on any OSError (a full disk)
  the temp file is removed and the error names the path. The temp files of the run's own writes
  that a kill left behind are removed when the run starts.
- Checksums: batches and checkpoints are verified against the sha256 recorded at write
  (batches: in the checkpoint; checkpoints: `deployment_<i>.pt.sha256`); a bad one is never loaded.
- Provenance: who made each deployment (commit, dirty flag, device, effective thread count,
  library versions); a resume on another device or thread count is refused unless allowed.
"""
from __future__ import annotations

import csv
import errno
import fcntl
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from algos.config import ConfigError, config_hash, read_config_file

IDENTITY = "identity.json"
IDENTITY_KEYS = ("algo", "env", "budget", "seed", "profile")
LOCK = "run.lock"
STALE_PREFIX = "stale-"
BATCH_KEYS = ("obs", "act", "rew", "next_obs", "terminated", "truncated", "episode_start")
PACKAGES = ("torch", "numpy", "gymnasium", "mujoco", "dm-control", "scipy", "pandas", "snakemake")
ROOT = Path(__file__).resolve().parent.parent
SEED_DIR = re.compile(r"seed\d+")  # the name of a run directory in the workflow's layout
# The files a run writes with atomic_write_bytes, per subdirectory: the temp files of these
# (.NAME.PID.tmp, temp_path) that a killed write leaves are removed when the run starts.
RUN_WRITES = {".": r"identity\.json|config\.yaml|provenance\.json|(eval_returns|model_eval|novelty|metrics|scalars)\.csv",
              "batches": r"deployment_\d+\.npz", "checkpoints": r"(mid_)?deployment_\d+\.pt(\.sha256)?"}


class RunError(RuntimeError):
    """A run that cannot go on; the message names what and the fix."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- atomic files
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` all or nothing. A failed write (a full disk) removes its temp file
    and raises a RunError naming `path`."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise RunError(write_error(path, err)) from None


def temp_path(path: Path) -> Path:
    """The temp file of this process's atomic write of `path`: .NAME.PID.tmp beside it."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_stale_temp_files(out: Path) -> list[Path]:
    """Removes the temp files of the run's own writes (RUN_WRITES) that a killed process left in
    `out`; called with the run's lock held, before it writes. Any other file is left alone."""
    removed = []
    for sub, names in RUN_WRITES.items():
        folder = out / sub
        pattern = re.compile(rf"\.({names})\.\d+\.tmp")
        if folder.is_dir():
            for p in folder.iterdir():
                if pattern.fullmatch(p.name) and p.is_file():
                    p.unlink()
                    removed.append(p)
    return removed


def write_error(path: Path, err: OSError) -> str:
    """One line for a failed file operation, with the fix."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot write {path}: {err.strerror}; free some space or choose another --out"
    return f"{path}: {err.strerror or err}; check the path and its permissions, or choose another --out"


def atomic_write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- batches
def save_batch(path: Path, batch: dict) -> str:
    """Writes the npz atomically and returns its sha256 (kept in the checkpoint)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: batch[k] for k in BATCH_KEYS})
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return sha256(data)


def load_batch(path: Path, digest: str) -> dict | None:
    """The batch, or None if it is missing or does not match its checksum."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if sha256(data) != digest:
        return None
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in BATCH_KEYS}


# ---------------------------------------------------------------- checkpoints
def checkpoint_path(out: Path, deployment: int) -> Path:
    return out / "checkpoints" / f"deployment_{deployment}.pt"


def save_checkpoint(out: Path, deployment: int, state: dict) -> None:
    """The checkpoint, then its sha256 beside it; the two newest are kept, and the mid-phase
    checkpoints of this deployment and earlier ones are dropped."""
    _save_verified(checkpoint_path(out, deployment), state)
    for old in (out / "checkpoints").glob("deployment_*.pt*"):
        if int(old.name.split(".")[0].split("_")[1]) < deployment - 1:
            old.unlink()
    for old in (out / "checkpoints").glob("mid_deployment_*.pt*"):
        if int(old.name.split(".")[0].split("_")[2]) <= deployment:
            old.unlink()


def _save_verified(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    atomic_write_bytes(path.with_name(path.name + ".sha256"), sha256(data).encode())


def mid_checkpoint_path(out: Path, deployment: int) -> Path:
    """The checkpoint written inside a phase of `deployment` (algos/core/preempt.py)."""
    return out / "checkpoints" / f"mid_deployment_{deployment}.pt"


def save_mid_checkpoint(out: Path, deployment: int, state: dict) -> Path:
    """A mid-phase checkpoint, verified like the others (its sha256 beside it); returns its path."""
    path = mid_checkpoint_path(out, deployment)
    _save_verified(path, state)
    return path


def _checkpoints_newest_first(out: Path) -> list[Path]:
    ckpt_dir = out / "checkpoints"
    if not ckpt_dir.is_dir():
        return []
    return sorted(ckpt_dir.glob("deployment_*.pt"), key=lambda p: -int(p.stem.split("_")[1]))


def read_checkpoint(path: Path) -> dict | None:
    """The checkpoint's state if its bytes match the recorded sha256, else None (with a message
    naming the file). Loaded with weights_only=True: tensors and plain values only."""
    digest_file = path.with_name(path.name + ".sha256")
    try:
        data, digest = path.read_bytes(), digest_file.read_text().strip()
    except OSError:
        log(f"checkpoint {path} has no readable {digest_file.name}; skipped (never loaded)")
        return None
    if sha256(data) != digest:
        log(f"checkpoint {path} does not match its sha256 ({digest_file.name}): corrupted; skipped (never loaded)")
        return None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - verified bytes that still do not load: skip as well
        log(f"checkpoint {path} is unreadable ({type(err).__name__}); skipped")
        return None


def latest_checkpoint(out: Path, cfg: dict):
    """(path, state, batches) of the newest checkpoint that verifies and whose batches all match
    their checksums; (None, None, []) when there is none."""
    for path in _checkpoints_newest_first(out):
        found = _verified(out, path, cfg)
        if found is None:
            log("falling back to the previous deployment's checkpoint")
            continue
        return path, *found
    return None, None, []


def mid_checkpoint(out: Path, cfg: dict, deployment: int):
    """(path, state, batches) of the mid-phase checkpoint of `deployment` if there is one that
    verifies like a deployment checkpoint (itself and its batches); else (None, None, [])."""
    path = mid_checkpoint_path(out, deployment)
    found = _verified(out, path, cfg) if path.is_file() else None
    if found is None:
        if path.is_file():
            log(f"redoing deployment {deployment} from its start")
        return None, None, []
    return path, *found


def _verified(out: Path, path: Path, cfg: dict) -> tuple[dict, list] | None:
    """(state, batches) of a checkpoint that matches its sha256 and whose batches match theirs;
    None (with a message naming what is wrong) otherwise."""
    state = read_checkpoint(path)
    if state is None:
        return None
    if state.get("config") != json.dumps(cfg, sort_keys=True):  # the identity makes this unreachable
        raise RunError(f"{path} was written with a different configuration; use another --out")
    batches = [load_batch(out / "batches" / f"deployment_{i + 1}.npz", digest)
               for i, digest in enumerate(state["batch_sha256"])]
    if any(b is None for b in batches):
        log(f"a batch of {path.name} is missing or corrupted")
        return None
    return state, batches


# ---------------------------------------------------------------- identity
def identity_of(cfg: dict) -> dict:
    return {**{k: cfg[k] for k in IDENTITY_KEYS}, "config_hash": config_hash(cfg)}


def _contents(out: Path) -> list[Path]:
    """What the run owns in `out`: everything but the lock, stale-*/ directories and the temp
    files a killed write leaves (.NAME.PID.tmp)."""
    if not out.is_dir():
        return []
    return [p for p in out.iterdir() if p.name != LOCK and not p.name.startswith(STALE_PREFIX)
            and not (p.name.startswith(".") and p.name.endswith(".tmp"))]


def _read_identity(out: Path) -> dict | None:
    """The identity of the run in `out`: identity.json; for a directory written before identities
    existed, the one its config.yaml (or newest verified checkpoint) implies; None for an empty
    directory; {"not_a_run": True} for one that holds files of no run, {"unreadable": path} for an
    identity that cannot be read."""
    path = out / IDENTITY
    if path.is_file():
        try:
            identity = json.loads(path.read_text())
            if isinstance(identity, dict):
                return identity
        except (OSError, ValueError):
            pass
        return {"unreadable": str(path)}
    if not _contents(out):
        return None
    cfg = None
    if (out / "config.yaml").is_file():
        try:
            cfg = read_config_file(out / "config.yaml")
        except (OSError, ConfigError):
            return {"unreadable": str(out / "config.yaml")}
    else:
        for ckpt in _checkpoints_newest_first(out):
            state = read_checkpoint(ckpt)
            if state is not None and "config" in state:
                cfg = json.loads(state["config"])
                break
    if not isinstance(cfg, dict) or not all(k in cfg for k in IDENTITY_KEYS):
        return {"not_a_run": True}
    return identity_of(cfg)


def _differences(old: dict, new: dict) -> str:
    if "unreadable" in old:
        return f"{old['unreadable']} is unreadable"
    if "not_a_run" in old:
        return "it is not empty and holds no run (no identity.json, config.yaml or checkpoint)"
    diffs = [f"{k}: {old.get(k)!r} there, {new[k]!r} here" for k in IDENTITY_KEYS if old.get(k) != new[k]]
    if not diffs and old.get("config_hash") != new["config_hash"]:
        diffs = [f"config hash {str(old.get('config_hash'))[:12]} there, {new['config_hash'][:12]} here "
                 f"(compare its config.yaml with this run's settings)"]
    return "; ".join(diffs)


def _move_aside(out: Path, old: dict) -> Path:
    tag = str(old.get("config_hash", "unknown"))[:12] or "unknown"
    stale = out / f"{STALE_PREFIX}{tag}"
    n = 2
    while stale.exists():
        stale, n = out / f"{STALE_PREFIX}{tag}-{n}", n + 1
    stale.mkdir()
    for p in _contents(out):
        if p != stale:
            shutil.move(str(p), str(stale / p.name))
    return stale


class RunDir:
    """An opened run directory: identity checked and written, lock held until `close()`. A lock
    held by another process is waited for at most `lock_wait` seconds (0: refused at once)."""

    def __init__(self, out: Path, cfg: dict, replace_stale: bool = False, lock_wait: float = 0.0):
        self.out = Path(out)
        self.identity = identity_of(cfg)
        self._lock = None
        self._claim(replace_stale, lock_wait)

    def _refusal(self, reason: str) -> RunError:
        return RunError(f"{self.out} holds another run ({reason}); refused before writing anything. Use another "
                        f"--out, or move {self.out} away to start over (the workflow passes --replace-stale, which "
                        f"moves the old run into {self.out}/{STALE_PREFIX}<hash>/)")

    def _check(self, replace_stale: bool) -> dict | None:
        """None when the directory is new or holds this run; the old identity when it must be replaced."""
        old = _read_identity(self.out)
        if old is None or old == self.identity:
            return None
        reason = _differences(old, self.identity) or "identity.json differs"
        if not replace_stale:
            raise self._refusal(reason)
        if "not_a_run" in old or not SEED_DIR.fullmatch(self.out.name):
            raise RunError(f"--replace-stale moves aside only a run directory (named seed<N>, holding identity.json "
                           f"or a run's config.yaml) but {self.out} is not one ({reason}); refused before writing "
                           f"anything. Give the run's own directory as --out")
        return old

    def _claim(self, replace_stale: bool, lock_wait: float) -> None:
        self._check(replace_stale)  # read only: a refused run writes nothing
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            lock = open(self.out / LOCK, "a+")
        except OSError as err:
            raise RunError(f"output directory {self.out} is not writable ({err.strerror}); choose another --out") from None
        self._take(lock, lock_wait)
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock
        try:
            old = self._check(replace_stale)  # again, now that no one else can write here
            if old is not None:
                stale = _move_aside(self.out, old)
                log(f"{self.out} held a run with another configuration ({_differences(old, self.identity)}); "
                    f"moved it to {stale}")
            if not (self.out / IDENTITY).is_file():
                atomic_write_bytes(self.out / IDENTITY, (json.dumps(self.identity, indent=2) + "\n").encode())
            removed = remove_stale_temp_files(self.out)
            if removed:
                log(f"{self.out}: removed the temp files of killed writes: {', '.join(p.name for p in removed)}")
        except BaseException:
            self.close()
            raise

    def _take(self, lock, wait: float) -> None:
        """Takes the lock, waiting at most `wait` seconds for another process that holds it."""
        deadline, said = time.monotonic() + wait, False
        while True:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "unknown"
            left = deadline - time.monotonic()
            if left <= 0:
                lock.close()
                waited = f" after waiting {wait:g}s (--lock-wait)" if wait > 0 else ""
                raise RunError(f"{self.out} is in use by another run (pid {holder}, lock {self.out / LOCK}){waited}; "
                               f"wait for it to finish or use another --out")
            if not said:
                log(f"{self.out} is in use by another run (pid {holder}); waiting up to {wait:g}s for its lock")
                said = True
            time.sleep(min(0.5, left))

    def close(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None


def check_out_arg(text: str) -> Path:
    if not text or not text.strip():
        raise RunError("--out is empty; give the run directory, e.g. --out results/mini/runs/musbo/hopper/500k/seed0")
    return Path(text)


def check_out_name(out: Path, seed: int) -> None:
    """A directory named seed<N> (the analysis's layout) must name this run's seed canonically:
    seed00 or seed1 for seed 0 would be a second, or a wrong, directory for the run."""
    name = Path(out).name
    if SEED_DIR.fullmatch(name) and name != f"seed{seed}":
        raise RunError(f"--out {out} ends in {name} but the run's seed is {seed}; name it seed{seed}")


# ---------------------------------------------------------------- provenance
@lru_cache(maxsize=1)
def _git() -> tuple[str, bool | None]:
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, timeout=20)

    try:
        commit = git("rev-parse", "HEAD").stdout.strip() or "unknown"
        status = git("status", "--porcelain", "--untracked-files=no")
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    return commit, dirty


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def host_record(device: torch.device) -> dict:
    """Who is making a deployment: the fields a resume compares (device, threads) and the rest."""
    commit, dirty = _git()
    return {"device": str(device), "threads": torch.get_num_threads(), "git_commit": commit, "git_dirty": dirty,
            "packages": package_versions(), "host": platform.node()}


def check_same_host(previous: dict | None, current: dict, allow_different_host: bool) -> bool:
    """Refuse a resume whose device or effective thread count differs from the process that made
    the last finished deployment (the numbers would differ), unless allowed. Returns whether the
    host differs (then recorded in the provenance)."""
    if not previous:
        return False
    diffs = [f"{k} {previous.get(k)!r} then, {current[k]!r} now" for k in ("device", "threads")
             if previous.get(k) != current[k]]
    if not diffs:
        return False
    if not allow_different_host:
        raise RunError(f"resuming on a different host: {'; '.join(diffs)}; the results would not match an "
                       f"uninterrupted run. Set the same device/torch_threads, or pass --allow-different-host "
                       f"(recorded in provenance.json)")
    log(f"resuming on a different host ({'; '.join(diffs)}): allowed, recorded in provenance.json")
    return True


def now() -> str:
    return datetime.now(timezone.utc).isoformat()
