"""Stopping a run inside a phase, and resuming it there (issue 21: jobs that outlive their time limit).

A run (algos/run.py) holds one `Session` while it trains. It is asked for a mid-phase checkpoint by
- SIGUSR1: save at the next poll (or after the deployment's own checkpoint) and stop;
- SIGTERM: the same while the algorithm trains (`Session.training`, where a poll is at most one
  iteration away); anywhere else (collect, eval, writing results) the run stops at once, saying
  where (it resumes from its last checkpoint);
- its timer, every `every_min` minutes of wall time: save at the next poll and go on (a hard kill
  then loses at most that much);
- its deadline, `stop_after_min` minutes after it started: as SIGUSR1 (a job under a time limit
  stops itself before it, e.g. the workflow's --stop-after-min of a capped SLURM job).

The long loops of a deployment poll once per iteration, at its top, and are each a `Loop`: every
model fit's epochs (training.ModelTrainer.fit), behaviour cloning's passes (bc.weighted_bc),
TRPO's iterations (model_trpo.train_in_model) and SAC's steps (mopo.MOPO.train):

    loop = preempt.loop("trpo", "iteration", generator)   # after the loop's set-up, before its first step
    if loop.finished:                                  # finished before the stop this run resumes from
        return loop.result
    first = loop.saved["iteration"] if loop.saved else 0   # the loop in progress at the stop
    for iteration in range(first, n):
        loop.poll(iteration, lambda: {"iteration": iteration, ...})   # what it needs to go on from here
        ...
    return loop.done(result)

A loop is known by its place among the loops its deployment entered. The rerun runs the
deployment's code again from its start, without its collection: the loops that had finished are
skipped (their results were saved), and the loop in progress goes on from its saved step after the
session restored the algorithm's state (the run's `restore`), the loop's generators and torch's
global RNG as they were at the stop, so it draws exactly what the uninterrupted run drew.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from typing import Callable

import torch

EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped with its state saved; rerunning the same command resumes
EXIT_SIGTERM = 128 + signal.SIGTERM  # stopped by SIGTERM where nothing could be saved (the shell's 143)
SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class Stopped(Exception):
    """The run saved where it was and stops; str() is the one line to print."""


class ResumeError(RuntimeError):
    """A mid-phase checkpoint that does not fit the code resuming it; the message names the fix."""


def rerun_hint(where: str) -> str:
    return f"{where}; rerun to resume"


class Session:
    """The stop requests and the loops of one run. save(record) writes the mid-phase checkpoint of
    a loop's record and returns its path; where() -> (deployment, phase) names the place (the run
    sets both once it has them)."""

    def __init__(self, save: Callable[[dict], object] | None = None, where: Callable[[], tuple] | None = None,
                 every_min: float = 0.0, stop_after_min: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.save, self.where, self.clock = save, where or (lambda: (0, "start")), clock
        self.every_s, self.stop_after_s = 60.0 * every_min, 60.0 * stop_after_min
        self.requested: str | None = None  # what asks to stop: a signal's name or the deadline
        self.in_training = False
        self.started = self.saved_at = clock()
        self.start_deployment(0)

    # ---- the run's side
    def start_deployment(self, deployment: int, resume: dict | None = None, restore: Callable | None = None) -> None:
        """resume: the loop record of the deployment's mid-phase checkpoint; restore(): the
        algorithm's state at that stop, loaded into the algorithm as it is then."""
        self.deployment, self.results, self.resume, self.restore = deployment, [], resume, restore
        self.entered = 0  # loops entered in this deployment

    def checkpointed(self, stop: bool = True) -> None:
        """A deployment checkpoint was written: the timer starts again; with `stop` (more
        deployments follow), a stop asked for meanwhile stops here."""
        self.saved_at = self.clock()
        if stop and self.due() and self.requested:
            raise Stopped(rerun_hint(f"stopped by {self.requested} after deployment {self.deployment} "
                                     f"(its checkpoint is written)"))

    @contextlib.contextmanager
    def training(self):
        """While the algorithm trains, SIGTERM waits for the next poll."""
        self.in_training = True
        try:
            yield
        finally:
            self.in_training = False

    def on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGTERM and not self.in_training:
            deployment, phase = self.where()
            print(rerun_hint(f"stopped by SIGTERM at deployment {deployment}, phase {phase} (nothing saved in this "
                             f"phase)"), file=sys.stderr, flush=True)
            os._exit(EXIT_SIGTERM)
        self.requested = name

    def due(self) -> bool:
        """Whether the next poll saves (and, with `requested`, stops)."""
        now = self.clock()
        if not self.requested and self.stop_after_s > 0 and now - self.started >= self.stop_after_s:
            self.requested = f"--stop-after-min {self.stop_after_s / 60:g}"
        return bool(self.requested) or (self.every_s > 0 and now - self.saved_at >= self.every_s)

    # ---- the loops' side
    def enter(self, name: str, unit: str, generators) -> "Loop":
        index, self.entered = self.entered, self.entered + 1
        loop = Loop(self, name, unit, index, generators)
        resume = self.resume
        if resume is not None:
            if index < resume["index"]:
                done_name, result = resume["results"][index]
                if done_name != name:
                    raise ResumeError(self._mismatch(resume, index, done_name, name))
                loop.finished, loop.result = True, result
                self.results.append((name, result))
            elif index == resume["index"]:
                if resume["name"] != name:
                    raise ResumeError(self._mismatch(resume, index, resume["name"], name))
                self.resume = None
                if self.restore is not None:
                    self.restore()
                for gen, state in zip(loop.generators, resume["generators"]):
                    gen.set_state(state)
                torch.set_rng_state(resume["rng"])
                loop.saved, loop.resumed_step = resume["state"], resume["step"]
        return loop

    def _mismatch(self, resume: dict, index: int, theirs: str, ours: str) -> str:
        return (f"the mid-phase checkpoint of deployment {self.deployment} was written by other code (its loop "
                f"{index} is {theirs}, here it is {ours}); delete checkpoints/mid_deployment_{self.deployment}.pt "
                f"to redo the deployment from its start")


class Loop:
    """One loop of a deployment (see the module's docstring)."""

    def __init__(self, session: Session | None, name: str, unit: str, index: int, generators):
        self.session, self.name, self.unit, self.index = session, name, unit, index
        self.generators = [g for g in generators if g is not None]
        self.finished, self.result, self.saved = False, None, None
        self.resumed_step = None  # the step this loop was resumed at: it runs before any stop (progress per job)

    def poll(self, step: int, state: Callable[[], dict]) -> None:
        """At the top of step `step`: when asked, save state() (what the loop needs to go on from
        here) with the generators and the global RNG, then stop if a signal asked for it."""
        session = self.session
        if session is None:
            return
        signal_for_test(f"{self.name}:{session.deployment}:{step}")
        if step == self.resumed_step or not session.due():
            return
        record = {"index": self.index, "name": self.name, "unit": self.unit, "step": int(step), "state": state(),
                  "generators": [g.get_state() for g in self.generators], "rng": torch.get_rng_state(),
                  "results": list(session.results)}
        path = session.save(record)
        session.saved_at = session.clock()
        if session.requested:
            deployment, phase = session.where()
            raise Stopped(rerun_hint(f"stopped by {session.requested} at deployment {deployment}, phase {phase}: "
                                     f"{self.name} {self.unit} {step} saved in {path}"))

    def done(self, result):
        """The loop finished with `result` (plain values and tensors: it is saved with later stops)."""
        if self.session is not None:
            self.session.results.append((self.name, result))
        return result


_session: Session | None = None


def loop(name: str, unit: str, *generators: torch.Generator | None) -> Loop:
    """The Loop of the running session (a loop that never stops when none is installed: tests,
    bench). unit: what one poll starts (epoch, iteration, ...); generators: those the loop draws
    from, restored with it."""
    if _session is None:
        return Loop(None, name, unit, 0, generators)
    return _session.enter(name, unit, generators)


@contextlib.contextmanager
def installed(session: Session):
    """`session` receives SIGUSR1 and SIGTERM and the loops' polls while the block runs; the
    previous handlers come back afterwards."""
    global _session
    previous = {}
    try:
        for signum in SIGNALS:
            previous[signum] = signal.signal(signum, session.on_signal)
    except ValueError:  # not the main thread: no handlers, polls only
        pass
    _session = session
    try:
        yield session
    finally:
        _session = None
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def signal_for_test(point: str) -> None:
    """Fault tests set MUSBO_SIGNAL_AT=<SIGNAL>@<point> to send the run that signal there; a point
    is <phase>:<deployment> (a phase's start) or <loop>:<deployment>:<step> (a loop's poll)."""
    wanted = os.environ.get("MUSBO_SIGNAL_AT", "")
    if "@" in wanted and wanted.split("@", 1)[1] == point:
        os.kill(os.getpid(), getattr(signal, wanted.split("@", 1)[0]))


def module_state(module: torch.nn.Module) -> dict:
    """A module's state_dict and, where it keeps its own optimizer (trpo.MLPBaseline), that one's."""
    optimizer = getattr(module, "optimizer", None)
    return {"module": module.state_dict(), "optimizer": None if optimizer is None else optimizer.state_dict()}


def load_module_state(module: torch.nn.Module, state: dict) -> None:
    module.load_state_dict(state["module"])
    if state["optimizer"] is not None:
        module.optimizer.load_state_dict(state["optimizer"])

