r"""Per-class view of SEG-OTCE: which target classes the score's conditional entropy comes from.

SEG-OTCE's ``W_T = H(Y_t | Y_s)`` is a sum over target classes b::

    H(Y_t | Y_s) = Σ_b h_b,   h_b = −Σ_a J_ab ln(J_ab / J_a·)

(J the label joint of one repetition, source class a × target class b, summing to 1;
``J_a· = Σ_b J_ab``). ``h_b`` is target class b's part of the entropy (its *share* is
``h_b / W_T``): it comes from the pixels of class b that the coupling sends to source classes
which also receive many pixels of other target classes. Per pixel of the class,
``h_b / J_·b = −Σ_a p(a | b) ln p(b | a)`` nats: 0 when every source class that b's pixels
go to receives only pixels of b, large when b has no counterpart among the source classes. Classes are
listed **worst covered first**, i.e. by this per-pixel figure (a frequent class has a large
share even when it is well covered; a rare class a small share even when it is not). The
source classes b's pixels are coupled to are ``p(a | b) = J_ab / J_·b``.

A joint is stored per repetition as compact JSON (:func:`encode_joint`): ``{"s": [source class
ids], "t": [target class ids], "j": [[J_ab, ...], ...]}`` (one row per source class, 6
significant digits, entries below 1e-9 written as 0). :func:`pair_breakdown` averages the
repetitions of one (model, target) pair: ``h_b`` is the mean over repetitions (a class a
repetition did not draw counts 0 there), so the shares sum to the mean ``W_T`` the score is
made of; ``p(a | b)`` and the class mass ``J_·b`` come from the mean joint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["Breakdown", "class_entropy", "decode_joint", "encode_joint", "pair_breakdown"]

#: Joint entries below this are written as 0 (their entropy terms are < 3e-8 nats).
_TINY = 1e-9


def class_entropy(joint: np.ndarray) -> np.ndarray:
    """``h_b = −Σ_a J_ab ln(J_ab / J_a·)`` for each target class b (columns of ``joint``);
    ``h.sum()`` is :func:`segotce_ray.metrics.otce.conditional_entropy` of the joint."""
    j = np.asarray(joint, dtype=np.float64)
    row = np.broadcast_to(j.sum(1, keepdims=True), j.shape)
    mask = j > 0
    ratio = np.divide(j, row, out=np.ones_like(j), where=mask)
    terms = np.where(mask, -j * np.log(np.where(mask, ratio, 1.0)), 0.0)
    return terms.sum(0)


def encode_joint(joint: np.ndarray, source_classes: Sequence[int],
                 target_classes: Sequence[int]) -> str:
    """A repetition's joint as compact JSON (see the module docstring)."""
    j = np.asarray(joint, dtype=np.float64)
    if j.shape != (len(source_classes), len(target_classes)):
        raise ValueError(f"joint of shape {j.shape} does not match {len(source_classes)} source "
                         f"and {len(target_classes)} target classes")
    rows = [[0 if v < _TINY else float(f"{v:.6g}") for v in r] for r in j.tolist()]
    return json.dumps({"s": [int(c) for c in source_classes],
                       "t": [int(c) for c in target_classes], "j": rows},
                      separators=(",", ":"))


def decode_joint(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(J (A, B), source class ids (A,), target class ids (B,))`` of :func:`encode_joint`'s
    text; a ValueError saying what is wrong otherwise."""
    try:
        d = json.loads(text)
        s = np.asarray(d["s"], dtype=np.int64)
        t = np.asarray(d["t"], dtype=np.int64)
        j = np.asarray(d["j"], dtype=np.float64).reshape(len(s), len(t))
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"not a stored label joint ({type(exc).__name__}: {exc}): "
                         f"{str(text)[:80]!r}") from exc
    return j, s, t


class Breakdown:
    """One pair's per-target-class view, worst-covered class first.

    Attributes (arrays of length B, in that order): ``target_classes`` (ids), ``entropy``
    (mean h_b in nats), ``share`` (h_b / Σ h), ``mass`` (the class's share of the target
    pixels, J_·b), ``per_pixel`` (h_b / J_·b, nats: the order, largest first), ``coupled``
    (per class: ``[(source class id, p(a | b)), ...]`` largest first); ``w_t`` = Σ h_b;
    ``repetitions`` averaged.
    """

    def __init__(self, target_classes: np.ndarray, entropy: np.ndarray, mass: np.ndarray,
                 coupled: list[list[tuple[int, float]]], repetitions: int) -> None:
        per_pixel = np.divide(entropy, mass, out=np.zeros_like(entropy), where=mass > 0)
        order = np.lexsort((target_classes, -per_pixel))
        self.per_pixel = per_pixel[order]
        self.target_classes = target_classes[order]
        self.entropy = entropy[order]
        self.mass = mass[order]
        self.coupled = [coupled[i] for i in order]
        self.w_t = float(entropy.sum())
        self.share = self.entropy / self.w_t if self.w_t > 0 else np.zeros_like(self.entropy)
        self.repetitions = int(repetitions)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per target class: target_class, per_pixel, entropy, share, mass, coupled."""
        return [{"target_class": int(c), "per_pixel": float(px), "entropy": float(h),
                 "share": float(s), "mass": float(m), "coupled": cp}
                for c, px, h, s, m, cp in zip(self.target_classes, self.per_pixel, self.entropy,
                                              self.share, self.mass, self.coupled)]


def pair_breakdown(joints: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
                   top: int = 3) -> Breakdown:
    """Average one pair's repetitions ``(J, source ids, target ids)`` into a :class:`Breakdown`;
    ``top`` source classes are kept per target class (those with p(a | b) ≥ 0.01)."""
    reps = list(joints)
    if not reps:
        raise ValueError("pair_breakdown: no repetition with a stored joint")
    src = np.unique(np.concatenate([s for _, s, _ in reps]))
    tgt = np.unique(np.concatenate([t for _, _, t in reps]))
    mean_j = np.zeros((len(src), len(tgt)))
    mean_h = np.zeros(len(tgt))
    for j, s, t in reps:
        rows, cols = np.searchsorted(src, s), np.searchsorted(tgt, t)
        mean_j[np.ix_(rows, cols)] += j / j.sum()
        mean_h[cols] += class_entropy(j / j.sum())
    mean_j /= len(reps)
    mean_h /= len(reps)
    mass = mean_j.sum(0)
    coupled = []
    for b in range(len(tgt)):
        p = mean_j[:, b] / mass[b] if mass[b] > 0 else np.zeros(len(src))
        best = np.argsort(-p, kind="stable")[:top]
        coupled.append([(int(src[a]), float(p[a])) for a in best if p[a] >= 0.01])
    return Breakdown(tgt, mean_h, mass, coupled, len(reps))
