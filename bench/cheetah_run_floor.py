"""Why Cheetah-Run's collection stays below half of raw physics: per-step costs, side by side.

    python bench/cheetah_run_floor.py

cheetah/run's physics step is cheap (about 7 us here), so Python's fixed per-step work weighs
as much as the physics. Measured, in microseconds per collected step (best of 3, 20k steps):
the bare MuJoCo calls of one step (mj_step2 + mj_step1), CheetahRunEnv.step, the same step
with the two MuJoCo calls removed (its Python floor), envs.collector.collect with such a
no-physics env (the loop's floor), and the real collect, which also pays dm_control's reset
(200 stabilising physics steps per 1000-step episode, part of the task's definition).
"""
import sys
import time
from pathlib import Path

import mujoco
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import envs.collector as collector  # noqa: E402
from envs.cheetah_run import CheetahRunEnv  # noqa: E402

N = 20000


class NoPhysicsCheetahRun(CheetahRunEnv):
    """CheetahRunEnv.step without mj_step2/mj_step1: everything else of the step."""

    def _physics_step(self) -> None:
        pass


def per_step_us(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best / N * 1e6


def main() -> None:
    actions = np.random.default_rng(0).uniform(-1, 1, (N, 6))
    env = CheetahRunEnv()
    env.reset(seed=0)
    model, data = env.model, env.data

    def bare():
        for a in actions:
            data.ctrl[:] = a
            mujoco.mj_step2(model, data)
            mujoco.mj_step1(model, data)

    def stepping(e):
        def loop():
            e.reset(seed=0)
            for i, a in enumerate(actions):
                if e._needs_reset:
                    e.reset(seed=i)
                e.step(a)
        return loop

    no_physics = NoPhysicsCheetahRun()
    no_physics.reset(seed=0)
    real_make_env = collector.make_env
    collector.make_env = lambda name, env_checker=False: type("Wrapped", (), {"unwrapped": no_physics})()
    try:
        loop_floor = per_step_us(lambda: collector.collect("cheetah-run", N, None, seed=0))
    finally:
        collector.make_env = real_make_env
    rows = {"bare physics (mj_step2 + mj_step1)": per_step_us(bare),
            "CheetahRunEnv.step": per_step_us(stepping(env)),
            "CheetahRunEnv.step without physics": per_step_us(stepping(no_physics)),
            "collect() with the no-physics env": loop_floor,
            "collect() (real)": per_step_us(lambda: collector.collect("cheetah-run", N, None, seed=0))}
    for name, us in rows.items():
        print(f"{name:40s} {us:6.2f} us/step")
    physics, real = rows["bare physics (mj_step2 + mj_step1)"], rows["collect() (real)"]
    print(f"collect / physics: {physics / real:.2f}; with no Python at all the reset's extra 200 steps per "
          f"episode alone cap it at {1000 / 1200:.2f}")


if __name__ == "__main__":
    main()
