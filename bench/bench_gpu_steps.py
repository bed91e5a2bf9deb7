"""The two per-step training loops that a GPU did not speed up (bench/cuda_logs/, 2026-12-04, H200:
BREMEN's behaviour cloning took 36 s per medium HalfCheetah deployment there against 20 s on one
CPU thread; MOPO's SAC about 9 ms per step, as on the CPU): what each step costs, side by side
with variants, at the shapes training uses (batch 256; BC: the 200 x 200 policy with BREMEN's
state-dependent log-std head; SAC: 256 x 256 actor and twin Q on MOPO's 5 % real / 95 % model
batch). ms per step, each the best of `repeats` loops of `steps` steps timed around a sync:

  bc_foreach_ms                algos.core.bc.weighted_bc as it runs (Adam, foreach kernels)
  bc_fused_ms                  the same with Adam's fused kernel
  sac_update_ms                algos.core.sac.SAC.update as it runs (it reads alpha and the losses
                               back to the host: two syncs per step)
  sac_update_no_sync_ms        the same step (losses, one backward, Adam, Polyak) without reading
                               anything back, i.e. what the loop would cost with its statistics
                               kept on the device

`python bench/bench_gpu_steps.py [--device cuda] [--quick] [--out FILE]` prints the table as JSON.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from unittest import mock

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import torch  # noqa: E402

from algos.config import resolve_run_config  # noqa: E402
from algos.core.bc import weighted_bc  # noqa: E402
from algos.core.model_trpo import make_policy  # noqa: E402
from algos.core.sac import mixed_batch  # noqa: E402
from bench_rollouts import _sync  # noqa: E402
from bench_sac import _buffer, _sac  # noqa: E402
from timing import best_time  # noqa: E402

OBS, ACT = 17, 6


def best_ms(loop, steps: int, repeats: int, device: torch.device) -> float:
    """ms per step of loop() (steps steps), each timed call ended by a sync: the GPU's time too."""
    loop()  # warm-up: allocator, Adam state, kernels
    _sync(device)
    return 1e3 * best_time(lambda: (loop(), _sync(device)), repeats) / steps


def bc_ms(device: torch.device, steps: int, repeats: int, fused: bool) -> float:
    cfg = resolve_run_config("medium", "bremen", "halfcheetah", "500k", 0)
    policy = make_policy(cfg, OBS, ACT, device)
    g = torch.Generator().manual_seed(0)
    data = {"obs": torch.randn(20_000, OBS, generator=g).numpy(), "act": (torch.rand(20_000, ACT, generator=g) * 2 - 1).numpy()}
    gen = torch.Generator(device).manual_seed(0)
    adam = functools.partial(torch.optim.Adam, fused=True) if fused else torch.optim.Adam
    with mock.patch("torch.optim.Adam", adam):  # the one difference between the two rows
        return best_ms(lambda: weighted_bc(policy, data, None, lr=cfg["bc"]["lr"], batch_size=cfg["bc"]["batch_size"],
                                           generator=gen, steps=steps), steps, repeats, device)


def sac_ms(device: torch.device, steps: int, repeats: int, sync: bool) -> float:
    sac = _sac(device)
    real, model = _buffer(10_000, device, 1), _buffer(50_000, device, 2)
    gen = torch.Generator(device=device).manual_seed(0)

    step = sac.update if sync else lambda batch: sac.step(sac.losses(batch))

    def loop():
        for _ in range(steps):
            step(mixed_batch(real, model, 256, 0.05, gen))

    return best_ms(loop, steps, repeats, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="few steps: tests the path in seconds")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    steps, repeats = (20, 1) if args.quick else (500, 3)
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (1 thread)",
           "torch": torch.__version__, "steps": steps, "repeats": repeats,
           "bc_foreach_ms": bc_ms(device, steps, repeats, fused=False),
           "bc_fused_ms": bc_ms(device, steps, repeats, fused=True),
           "sac_update_ms": sac_ms(device, steps, repeats, sync=True),
           "sac_update_no_sync_ms": sac_ms(device, steps, repeats, sync=False)}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
