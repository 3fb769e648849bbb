"""Every seed derivation of the package: stable across processes, platforms and runs.

Seeds come from SHA-256 of names and numbers, never from Python's ``hash()`` (salted per
process), so the same inputs draw the same pixels on any worker, in any order, on a retry.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["pair_digest", "repetition_seed", "stable_seed"]


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from the SHA-256 of the parts' string forms joined by U+001F."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "little")


def pair_digest(model: str, target: str) -> bytes:
    """SHA-256 of ``model ␀ target``: the pair's identity for seeds and score-blind orders."""
    return hashlib.sha256(f"{model}\x00{target}".encode()).digest()


def repetition_seed(job_seed: int, model: str, target: str, k: int) -> int:
    """Seed of repetition k of (model, target).

    SeedSequence(entropy = [job_seed, sha256(model ␀ target) as 8 uint32 words, k]) → the
    first 64-bit word of its state, shifted to 63 bits (fits any RNG's seed argument).
    """
    if job_seed < 0 or k < 0:
        raise ValueError(f"seeds need job_seed >= 0 and k >= 0, got {job_seed}, {k}")
    words = [int(w) for w in np.frombuffer(pair_digest(model, target), dtype="<u4")]
    state = np.random.SeedSequence([int(job_seed), *words, int(k)]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))
