"""Random streams derived from (run seed, stream names), so that every deployment and phase
is reproducible on its own: a resumed run draws exactly what an uninterrupted one would."""
import hashlib

import numpy as np
import torch


def stream_seed(seed: int, *stream) -> int:
    """A 63-bit seed from the run seed and any labels (e.g. "collect", deployment)."""
    key = repr((int(seed),) + tuple(stream)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def rngs(seed: int, *stream, device: str | torch.device = "cpu") -> tuple[np.random.Generator, torch.Generator]:
    s = stream_seed(seed, *stream)
    gen = torch.Generator(device=device)
    gen.manual_seed(s)
    return np.random.default_rng(s), gen


def seed_globals(seed: int, *stream) -> None:
    """Seed torch's global RNG (parameter init, dropout) for one phase."""
    torch.manual_seed(stream_seed(seed, "global", *stream))
