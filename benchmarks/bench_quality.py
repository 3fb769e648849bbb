"""Quality benchmark over several worlds: can a user trust the rankings?

Evaluation protocol (issue 18; fixed in this docstring and committed before any score of
it was looked at)
----------------------------------------------------------------------------------------

Worlds. The worlds of the demo generator (``segotce_ray.demo.worlds.WORLDS``), each a
:class:`~segotce_ray.demo.worlds.WorldProtocol` (generated world, zoo, fine-tuning recipe,
labelled target images, fine-tuning seeds):

- ``paper``     — the paper regime: one architecture (8 tiny nets, one per source; the
  sources sit on a hue grid, so each of the 3 targets has sources at graded distances),
  8 labelled target images, fine-tune 15 steps (batch 4, lr 1e-3), mIoU on 32 held-out
  images; best source ≥ 10 mIoU points above training from scratch on every target.
- ``demo``      — ``paper`` plus one LR-ASPP (another architecture) trained on the first
  source: what ``segotce-ray demo`` builds.
- ``same_arch`` — legacy world (7 assorted sources, 4 targets, one with coarse labels),
  seed 1, the 7 tiny nets; fine-tune 20 steps (batch 8) on 16 images.
- ``few_shot``  — legacy world seed 0, 7 tiny nets + 1 LR-ASPP; 4 labelled images, 10 steps.
- ``long_ft``   — legacy world seed 0, same zoo; 60 steps (batch 8) on 16 images.

Every world's ground truth has ≥ 3 fine-tuning seeds per (model, target) and ships in
``segotce_ray/demo/data/`` (``ground_truth.csv`` for ``demo``, ``worlds/<world>.csv``
otherwise) with its fingerprint, the from-scratch reference and the command that
regenerates it. The ground truth a ranker is measured against is the mean over the seeds.

Pools. Per (model, dataset) 1000 pixels per labelled image (uniform among valid pixels,
seeded per image), float16 as in the store, extracted in-process with the pipeline's own
pieces: penultimate features, logits and the source head's softmax (``probs``).

Rankers (scored on the same pools of every world):

- SEG-OTCE at the job defaults (penultimate, cost_scale none, ε 0.1, uniform sampling,
  sinkhorn), N = 1000 pixels per side, K = 3 repetitions, job seed 0.
- The 8 peers (LogME, LEEP, NCE, N-LEEP, H-score, shrunk H-score, GBC, TransRate) on K = 3
  draws of N = 1000 target pixels; feature peers on each of penultimate / logits / probs,
  NCE and LEEP on probs. A peer's headline row is its penultimate input (probs for NCE and
  LEEP); the other inputs are candidates of the recommended ranker.
- Baselines: ``capacity`` (score = parameter count: more = higher) and ``random`` (the
  expectation over uniformly random rankings: Pearson 0, Kendall τ_b 0, regret = mean over
  models of best − value, computed exactly, no sampling).
- The recommended ranker, chosen among the SEG-OTCE default and every peer input (not the
  baselines): ``loto`` — per world, for each held-out target, the candidate with the
  highest mean Pearson over the world's other targets (ties: lower mean regret, then the
  order above), measured on the held-out target; ``nested`` — leave one world out: the
  candidate with the highest mean-over-the-other-worlds Pearson (each world = the mean
  over its targets; ties as above), measured on the held-out world.

Measures. Per target: Pearson r, Kendall τ_b and top-1 regret (mIoU points: true best −
ground truth of the top-scored model) between the K-mean scores and the seed-mean ground
truth; per world: the mean over its targets; over worlds: the unweighted mean of the
per-world means. Noise ceiling per target: split-half reliability of the ground truth
over its seeds, Spearman–Brown corrected (every distinct split of the seeds;
``segotce_ray.demo.reliability.noise_ceiling``), per world its mean over targets.

Intervals. 90% percentile bootstrap, B = 1000 replicates, seeded: each replicate resamples
the fine-tuning seeds of the ground truth (with replacement, per world) and, per target,
the models (with replacement; a replicate whose draw makes a measure undefined leaves
that target out of its mean). The same replicates serve every ranker, so the paired
difference SEG-OTCE − ranker has its own interval; over-worlds intervals take the mean of
the per-world replicates.

What the report states, per world and over worlds: every ranker's Pearson, τ_b and regret
with their intervals, the noise ceiling, SEG-OTCE − ranker (Pearson) with its interval,
and the recommended ranker's picks. "Better" is claimed only where that 90% interval
excludes 0. Tables are written as CSV (``truth.csv``: world, model, target, seed, value;
``scores.csv``: world, ranker, model, target, score; ``summary.csv``; ``paired.csv``;
``picks.csv``), so every statistic can be recomputed from them.

``--grid quick|full`` also scores the SEG-OTCE settings grid of issue 12 (layer ×
cost_scale × ε × sampling, plus exact-transport references) as extra candidates of the
recommended ranker; off by default.

    PYTHONPATH=. python benchmarks/bench_quality.py --workdir /tmp/segotce-worlds
    PYTHONPATH=. python benchmarks/bench_quality.py --worlds paper demo
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segotce_ray.inputs.datasets import open_dataset  # noqa: E402
from segotce_ray.demo.ground_truth import read_csv as read_gt  # noqa: E402
from segotce_ray.demo.reliability import noise_ceiling, value_table  # noqa: E402
from segotce_ray.demo.worlds import WORLDS, build_world  # noqa: E402
from segotce_ray.demo.zoo import build_architecture  # noqa: E402
from segotce_ray.metrics.otce import otce_score  # noqa: E402
from segotce_ray.inputs.models import ModelSpec, load_model  # noqa: E402
from segotce_ray.extract.sampling import sample_feature_maps, sample_pixels
from segotce_ray.seeds import stable_seed  # noqa: E402
from segotce_ray.spec.build import load_spec  # noqa: E402

N_PIXELS, REPETITIONS, SEED = 1000, 3, 0
LAYERS = ("penultimate", "logits", "probs")
COST_SCALES = ("none", "mean", "max")
EPSILONS = (0.01, 0.1, 1.0)
SAMPLINGS = ("uniform", "class_balanced")
SHOWN = ("pearson", "kendall_tau", "regret")
SEG_OTCE = "seg-otce"
BOOTSTRAP, LEVEL = 1000, 0.90
#: the job default before this benchmark (scored first, so a cut run still has it)
PREVIOUS_DEFAULT = {"layer": "penultimate", "cost_scale": "none", "epsilon": 0.1,
                    "sampling": "uniform", "solver": "sinkhorn"}


def grid(quick: bool) -> list[dict]:
    """Every setting of the protocol: the previous default first, then the sinkhorn grid,
    then the emd references (``eligible`` False)."""
    samplings = SAMPLINGS[:1] if quick else SAMPLINGS
    epsilons = (0.1, 1.0) if quick else EPSILONS
    out = [dict(PREVIOUS_DEFAULT, eligible=True)]
    for sampling, layer, scale, eps in itertools.product(samplings, LAYERS, COST_SCALES, epsilons):
        out.append({"layer": layer, "cost_scale": scale, "epsilon": eps, "sampling": sampling,
                    "solver": "sinkhorn", "eligible": True})
    for sampling, layer in itertools.product(samplings, LAYERS):
        out.append({"layer": layer, "cost_scale": "none", "epsilon": 0.0, "sampling": sampling,
                    "solver": "emd", "eligible": False})
    unique = {json.dumps(s, sort_keys=True): s for s in out}
    return list(unique.values())


def extract(spec, device: str, pixels_per_image: int, seed: int) -> dict:
    """pools[(model, dataset)] = {'penultimate': (P, D) f16, 'logits': (P, C) f16,
    'probs': (P, C) f16, 'labels': (P,) i16} for each model's source and every target."""
    pools: dict = {}
    for name, m in spec.models.items():
        model = load_model(ModelSpec(name=name, architecture=m.constructor, checkpoint=m.checkpoint,
                                     num_classes=m.num_classes, layer="penultimate",
                                     mean=tuple(m.mean), std=tuple(m.std)), device=device)
        for dname in [m.source, *spec.targets]:
            ds = open_dataset(dname, spec.datasets[dname].reader_spec())
            parts: dict[str, list] = {"penultimate": [], "logits": [], "labels": []}
            for i in range(0, len(ds.samples), 16):
                batch = ds.samples[i:i + 16]
                loaded = [ds.load(s) for s in batch]
                images = np.stack([im for im, _ in loaded])
                draws = [sample_pixels(lab, pixels_per_image, seed=stable_seed(seed, name, dname, s.image_id),
                                       ignore_index=ds.ignore_index) for s, (_, lab) in zip(batch, loaded)]
                rows, cols = [d[0] for d in draws], [d[1] for d in draws]
                x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 255
                with torch.inference_mode():
                    feat, logits = model.features(x)
                    h, w = images.shape[1:3]
                    f = sample_feature_maps(feat, rows, cols, h, w).half().cpu().numpy()
                    lg = sample_feature_maps(logits, rows, cols, h, w).half().cpu().numpy()
                for b, d in enumerate(draws):
                    n = len(d[0])
                    parts["penultimate"].append(f[b, :n]); parts["logits"].append(lg[b, :n])
                    parts["labels"].append(d[2])
            pool = {k: np.concatenate(v) for k, v in parts.items()}
            pool["probs"] = torch.softmax(torch.from_numpy(pool["logits"]).float(), 1).half().numpy()
            pools[(name, dname)] = pool
        model.close()
    return pools


def world_pools(spec, workdir: Path, device: str) -> tuple[str, dict]:
    """(cache key, pools) of a world's job spec; pools cached as .npz under ``workdir``."""
    key = json.dumps({"models": spec.to_dict()["models"], "datasets": spec.to_dict()["datasets"]},
                     sort_keys=True, default=str)
    key = hashlib.sha256(key.encode()).hexdigest()[:12]
    cache = workdir / f"bench_pools_{key}.npz"
    if cache.exists():
        flat = np.load(cache)
        pools: dict = {}
        for name in flat.files:
            model, dataset, column = name.split("|")
            pools.setdefault((model, dataset), {})[column] = flat[name]
        return key, pools
    pools = extract(spec, device, 1000, seed=SEED)
    np.savez(cache, **{f"{m}|{d}|{c}": v for (m, d), pool in pools.items() for c, v in pool.items()})
    return key, pools


def score_setting(spec, pools, s: dict, device: str) -> pd.DataFrame:
    """model, target, score (mean of K repetitions), seconds (wall time of the K) per pair."""
    rows = []
    for name, m in spec.models.items():
        src = pools[(name, m.source)]
        for target in spec.targets:
            tgt = pools[(name, target)]
            t0 = time.perf_counter()
            try:
                r = otce_score(torch.from_numpy(src[s["layer"]]).to(device), src["labels"],
                               torch.from_numpy(tgt[s["layer"]]).to(device), tgt["labels"],
                               n_pixels=N_PIXELS, repetitions=REPETITIONS,
                               epsilon=s["epsilon"] or 0.1, solver=s["solver"],
                               sampling=s["sampling"], cost_scale=s["cost_scale"],
                               seed=stable_seed(SEED, name, target), device=device)
                score = r.score
            except (ValueError, RuntimeError) as exc:  # one failing pair is reported, not fatal
                print(f"  {s}: {name} -> {target} failed: {exc}", file=sys.stderr)
                score = np.nan
            rows.append({"model": name, "target": target, "score": score,
                         "seconds": time.perf_counter() - t0})
    return pd.DataFrame(rows)


def score_table(spec, pools, setting: dict, device: str, name: str) -> pd.DataFrame:
    """ranker, model, target, score of one SEG-OTCE setting."""
    return score_setting(spec, pools, setting, device).assign(ranker=name)


def peer_scores(spec, pools) -> pd.DataFrame:
    """ranker (``metric/input``), model, target, score of every peer on every input it
    takes: feature peers on each feature space, NCE/LEEP on probs; K draws of N target
    pixels seeded per (model, target, k)."""
    from segotce_ray.metrics.peers import PEER_METRICS, compute_metric

    recs = []
    for metric, info in PEER_METRICS.items():
        for layer in (LAYERS if info.inputs == "features" else ("probs",)):
            for name in spec.models:
                for target in spec.targets:
                    p, vals = pools[(name, target)], []
                    for k in range(REPETITIONS):
                        rng = np.random.default_rng(stable_seed(SEED, name, target, k))
                        take = np.sort(rng.choice(len(p["labels"]), min(N_PIXELS, len(p["labels"])),
                                                  replace=False))
                        arg = {"probs" if info.inputs == "probs" else "features":
                               p[layer][take].astype(np.float32)}
                        try:
                            vals.append(compute_metric(metric, labels=p["labels"][take].astype(np.int64),
                                                       **arg))
                        except Exception as exc:  # a failing peer is reported, not fatal
                            print(f"  peer {metric}/{layer} {name}->{target}: {exc}", file=sys.stderr)
                            vals.append(np.nan)
                    recs.append({"ranker": f"{metric}/{layer}", "model": name, "target": target,
                                 "score": float(np.mean(vals))})
    return pd.DataFrame(recs)


def capacity_scores(spec) -> pd.DataFrame:
    """The capacity baseline: score = parameter count (more = higher)."""
    recs = []
    for name, m in spec.to_dict()["models"].items():
        n = sum(p.numel() for p in build_architecture(m["architecture"], m["num_classes"]).parameters())
        recs += [{"ranker": "capacity", "model": name, "target": t, "score": float(n)}
                 for t in spec.targets]
    return pd.DataFrame(recs)


# ----------------------------------------------------------------------------- statistics
# Computed from the tables alone (truth: world, model, target, seed, value; scores: world,
# ranker, model, target, score), so they can be recomputed from the written CSVs.


def measures(s: np.ndarray, g: np.ndarray) -> dict[str, np.ndarray]:
    """Pearson, Kendall τ_b and top-1 regret of each row of scores ``s`` vs ground truth
    ``g`` (both (B, n)); NaN where undefined (constant scores: all three; constant truth:
    the correlations). Regret with tied top scores is the mean over the tied models."""
    s, g = np.asarray(s, np.float64), np.asarray(g, np.float64)
    sc, gc = s - s.mean(1, keepdims=True), g - g.mean(1, keepdims=True)
    den = np.sqrt((sc ** 2).sum(1) * (gc ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        pearson = np.where(den > 0, (sc * gc).sum(1) / np.where(den > 0, den, 1), np.nan)
        i, j = np.triu_indices(s.shape[1], 1)
        ds, dg = np.sign(s[:, i] - s[:, j]), np.sign(g[:, i] - g[:, j])
        n1, n2 = (ds != 0).sum(1), (dg != 0).sum(1)
        tau = np.where((n1 > 0) & (n2 > 0), (ds * dg).sum(1) / np.sqrt(n1 * n2), np.nan)
    top = np.isclose(s, s.max(1, keepdims=True), rtol=0, atol=1e-12 * np.abs(s).max())
    regret = g.max(1) - (g * top).sum(1) / top.sum(1)
    const_s = np.ptp(s, axis=1) == 0
    pearson[const_s], tau[const_s], regret[const_s] = np.nan, np.nan, np.nan
    return {"pearson": pearson, "kendall_tau": tau, "regret": regret}


def draws(truth: pd.DataFrame, b: int, seed: int = SEED) -> dict:
    """The bootstrap draws of one world: seed indices (b+1, S) and per target model indices
    (b+1, n); row 0 is the identity (the point estimate)."""
    rng = np.random.default_rng(stable_seed(seed, "bootstrap", *sorted(truth.target.unique())))
    n_seeds = truth.seed.nunique()
    out = {"seeds": np.vstack([np.arange(n_seeds), rng.integers(0, n_seeds, (b, n_seeds))])}
    for t, g in truth.groupby("target", sort=True):
        n = g.model.nunique()
        out[t] = np.vstack([np.arange(n), rng.integers(0, n, (b, n))])
    return out


def ranker_replicates(truth: pd.DataFrame, scores: pd.DataFrame, dr: dict) -> dict:
    """ranker -> target -> measure -> (b+1,) replicates (row 0 = point estimate); also the
    ``random`` baseline's expectation on the same draws."""
    rows = list(truth.itertuples(index=False))
    out: dict = {}
    for t in sorted(truth.target.unique()):
        models, _, v = value_table([(r.model, r.target, r.seed, r.value) for r in rows], t)
        g_all = v[:, dr["seeds"]].mean(2).T                         # (b+1, n_models)
        g = np.take_along_axis(g_all, dr[t], 1)                      # resampled models
        for ranker, sc in scores[scores.target == t].groupby("ranker"):
            by = dict(zip(sc.model, sc.score))
            s = np.array([by.get(m, np.nan) for m in models])[dr[t]]
            out.setdefault(ranker, {})[t] = measures(s, g)
        zero = np.where(np.ptp(g, axis=1) > 0, 0.0, np.nan)
        out.setdefault("random", {})[t] = {"pearson": zero, "kendall_tau": zero,
                                            "regret": g.max(1) - g.mean(1)}
    return out


def world_mean(rep: dict, targets: list[str], measure: str) -> np.ndarray:
    """(b+1,) mean over targets (NaN-ignoring) of one ranker's measure."""
    stack = np.vstack([rep[t][measure] for t in targets])
    with np.errstate(all="ignore"):
        return np.nanmean(np.where(np.isnan(stack), np.nan, stack), axis=0)


def interval(x: np.ndarray) -> tuple[float, float, float]:
    """(point, lo, hi): row 0 and the LEVEL percentile interval of rows 1.. (NaN-ignoring)."""
    rest = x[1:][np.isfinite(x[1:])]
    if not len(rest):
        return float(x[0]), np.nan, np.nan
    a = (1 - LEVEL) / 2
    return float(x[0]), float(np.quantile(rest, a)), float(np.quantile(rest, 1 - a))


def pick(candidates: list[str], pearson: dict, regret: dict) -> str:
    """The candidate with the highest Pearson; ties: lower regret, then candidate order."""
    def key(c: str) -> tuple:
        p, r = pearson[c], regret[c]
        return (-(p if np.isfinite(p) else -np.inf), r if np.isfinite(r) else np.inf,
                candidates.index(c))
    return min(candidates, key=key)


def loto(rep: dict, targets: list[str], candidates: list[str]) -> tuple[dict, list[str]]:
    """Leave one target out within a world, redone in every replicate: measures (b+1,) of
    the pick on each held-out target, averaged over targets; the point picks per target."""
    n = len(next(iter(rep[candidates[0]].values()))["pearson"])
    per_t = {m: np.full((len(targets), n), np.nan) for m in SHOWN}
    picks = []
    for ti, t in enumerate(targets):
        others = [u for u in targets if u != t]
        for b in range(n):
            with np.errstate(all="ignore"):
                pe = {c: np.nanmean([rep[c][u]["pearson"][b] for u in others]) for c in candidates}
                re = {c: np.nanmean([rep[c][u]["regret"][b] for u in others]) for c in candidates}
            c = pick(candidates, pe, re)
            if b == 0:
                picks.append(f"{t}:{c}")
            for m in SHOWN:
                per_t[m][ti, b] = rep[c][t][m][b]
    with np.errstate(all="ignore"):
        return {m: np.nanmean(v, axis=0) for m, v in per_t.items()}, picks


def nested(world_means: dict, candidates: list[str]) -> tuple[dict, dict]:
    """Leave one world out: per held-out world the measures (b+1,) of the candidate with
    the best mean Pearson over the other worlds (redone per replicate); the point picks."""
    worlds = list(world_means)
    out, picks = {}, {}
    for w in worlds:
        others = [v for v in worlds if v != w]
        n = len(world_means[w][candidates[0]]["pearson"])
        res = {m: np.full(n, np.nan) for m in SHOWN}
        for b in range(n):
            with np.errstate(all="ignore"):
                pe = {c: np.nanmean([world_means[v][c]["pearson"][b] for v in others]) for c in candidates}
                re = {c: np.nanmean([world_means[v][c]["regret"][b] for v in others]) for c in candidates}
            c = pick(candidates, pe, re)
            if b == 0:
                picks[w] = c
            for m in SHOWN:
                res[m][b] = world_means[w][c][m][b]
        out[w] = res
    return out, picks


def statistics(truth: pd.DataFrame, scores: pd.DataFrame, candidates: list[str],
               b: int = BOOTSTRAP) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """summary (world, ranker, measure, point, lo, hi; world ``mean`` = over worlds),
    paired (SEG-OTCE − ranker, Pearson) and picks, from the two long tables."""
    summary, paired, picks, wm_all = [], [], [], {}
    for w, tw in truth.groupby("world", sort=False):
        sw = scores[scores.world == w]
        targets = sorted(tw.target.unique())
        dr = draws(tw, b)
        rep = ranker_replicates(tw, sw, dr)
        wm = {r: {m: world_mean(rep[r], targets, m) for m in SHOWN} for r in rep}
        wm["loto"], lp = loto(rep, targets, [c for c in candidates if c in rep])
        picks += [{"world": w, "kind": "loto", "pick": p} for p in lp]
        ceil = [noise_ceiling(value_table([(r.model, r.target, r.seed, r.value)
                                           for r in tw.itertuples(index=False)], t)[2])
                for t in targets]
        summary.append({"world": w, "ranker": "noise_ceiling", "measure": "pearson",
                        "point": float(np.mean(ceil)), "lo": min(ceil), "hi": max(ceil)})
        wm_all[w] = wm
    worlds = list(wm_all)
    cands = [c for c in candidates if all(c in wm_all[w] for w in worlds)]
    if len(worlds) > 1:
        nest, np_ = nested({w: {c: wm_all[w][c] for c in cands} for w in worlds}, cands)
        for w in worlds:
            wm_all[w]["nested"] = nest[w]
            picks.append({"world": w, "kind": "nested", "pick": np_[w]})
    rankers = sorted({r for w in worlds for r in wm_all[w]})
    for w in [*worlds, "mean"]:
        for r in rankers:
            if w == "mean":
                if not all(r in wm_all[v] for v in worlds):
                    continue
                # every world counts once: undefined on one world (e.g. capacity on a
                # one-architecture world) = undefined over worlds
                ms = {m: np.mean([wm_all[v][r][m] for v in worlds], axis=0) for m in SHOWN}
                base = np.mean([wm_all[v][SEG_OTCE]["pearson"] for v in worlds], axis=0)
            else:
                if r not in wm_all[w]:
                    continue
                ms, base = wm_all[w][r], wm_all[w][SEG_OTCE]["pearson"]
            for m in SHOWN:
                summary.append({"world": w, "ranker": r, "measure": m,
                                **dict(zip(("point", "lo", "hi"), interval(ms[m])))})
            if r != SEG_OTCE:
                paired.append({"world": w, "ranker": r,
                               **dict(zip(("point", "lo", "hi"), interval(base - ms["pearson"])))})
    return pd.DataFrame(summary), pd.DataFrame(paired), pd.DataFrame(picks)


# ----------------------------------------------------------------------------- running


def superset_key(spec, loaded: dict) -> str | None:
    """The key of already extracted pools that hold every (model, dataset) of ``spec``
    extracted the same way (same model and dataset entries), else None."""
    def norm(x):  # "<workdir>/../zoo/x.pth" and "<other>/../zoo/x.pth" are one file
        if isinstance(x, dict):
            return {k: norm(v) for k, v in x.items()}
        return os.path.normpath(x) if isinstance(x, str) and os.sep in x else x

    d = norm(spec.to_dict())
    for key, other in loaded.items():
        o = norm(other.to_dict())
        if (all(o["models"].get(m) == v for m, v in d["models"].items())
                and all(o["datasets"].get(n) == v for n, v in d["datasets"].items())):
            return key
    return None


def build_worlds(names: list[str], root: Path, device: str, workers: int | None) -> dict:
    """name -> (spec, per-seed truth, pools key, pools); worlds sharing pools share arrays."""
    worlds, by_key = {}, {}
    for name in names:
        t0 = time.perf_counter()
        path = build_world(WORLDS[name], root, workers=workers)
        spec = load_spec(path)
        truth = pd.DataFrame(read_gt(path.parent / "ground_truth.csv"),
                             columns=["model", "target", "seed", "value"]).assign(world=name)
        key = superset_key(spec, {k: w[0] for k, w in by_key.items()})
        if key is None:
            key, pools = world_pools(spec, root, device)
            by_key[key] = (spec, pools)
        pools = by_key[key][1]
        worlds[name] = (spec, truth, key, pools)
        print(f"world {name}: {len(spec.models)} models x {len(spec.targets)} targets x "
              f"{truth.seed.nunique()} seeds, ready in {time.perf_counter() - t0:.0f}s", flush=True)
    return worlds


def score_worlds(worlds: dict, device: str, settings: list[dict], peers: bool) -> pd.DataFrame:
    """The long score table (world, ranker, model, target, score) of every world."""
    parts, cache = [], {}
    for w, (spec, _, key, pools) in worlds.items():
        t0 = time.perf_counter()
        if key not in cache:  # worlds with the same pools share the scores
            tabs = [capacity_scores(spec),
                    score_table(spec, pools, dict(PREVIOUS_DEFAULT), device, SEG_OTCE)]
            tabs += [score_table(spec, pools, st, device, setting_name(st)) for st in settings]
            if peers:
                tabs.append(peer_scores(spec, pools))
            cache[key] = pd.concat(tabs, ignore_index=True)
        sc = cache[key]
        sc = sc[sc.model.isin(list(spec.models)) & sc.target.isin(spec.targets)]
        parts.append(sc.assign(world=w)[["world", "ranker", "model", "target", "score"]])
        print(f"  scored {w} ({time.perf_counter() - t0:.0f}s)", flush=True)
    return pd.concat(parts, ignore_index=True)


def setting_name(s: dict) -> str:
    return f"seg-otce:{s['layer']}:{s['cost_scale']}:{s['epsilon']}:{s['sampling']}:{s['solver']}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=".segotce_worlds", help="worlds, zoos and pool caches")
    p.add_argument("--worlds", nargs="*", default=list(WORLDS), choices=list(WORLDS))
    p.add_argument("--device", default="auto")
    p.add_argument("--grid", choices=("none", "quick", "full"), default="none",
                   help="also score the issue-12 SEG-OTCE grid (extra candidates)")
    p.add_argument("--out", default=None, help="folder for the CSV results")
    p.add_argument("--workers", type=int, default=None, help="zoo/ground-truth worker processes")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--bootstrap", type=int, default=BOOTSTRAP)
    p.add_argument("--stats-only", action="store_true",
                   help="recompute the statistics from truth.csv and scores.csv in --out")
    a = p.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    root = Path(a.workdir).expanduser().absolute()
    out = Path(a.out) if a.out else root / "bench_quality"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if a.stats_only:
        truth, scores = pd.read_csv(out / "truth.csv"), pd.read_csv(out / "scores.csv")
    else:
        print(f"device {device}; torch {torch.__version__}; {os.cpu_count()} CPUs; "
              f"N={N_PIXELS}, K={REPETITIONS}")
        worlds = build_worlds(a.worlds, root, device, a.workers)
        truth = pd.concat([w[1] for w in worlds.values()], ignore_index=True)
        truth[["world", "model", "target", "seed", "value"]].to_csv(out / "truth.csv", index=False)
        settings = [] if a.grid == "none" else [s for s in grid(a.grid == "quick")
                                                if s != dict(PREVIOUS_DEFAULT, eligible=True)]
        scores = score_worlds(worlds, device, [{k: v for k, v in s.items() if k != "eligible"}
                                               for s in settings], not a.no_peers)
        scores.to_csv(out / "scores.csv", index=False)
    rankers = list(dict.fromkeys(scores.ranker))
    candidates = [r for r in rankers if r not in ("capacity",)]
    summary, paired, picks = statistics(truth, scores, candidates, a.bootstrap)
    for name, df in (("summary", summary), ("paired", paired), ("picks", picks)):
        df.to_csv(out / f"{name}.csv", index=False)
    report(summary, paired, picks)
    print(f"\nresults in {out}; total {time.perf_counter() - t0:.0f}s")
    return 0


HEADLINE = (SEG_OTCE, "logme/penultimate", "leep/probs", "nce/probs", "nleep/penultimate",
            "hscore/penultimate", "hscore_shrinkage/penultimate", "gbc/penultimate",
            "transrate/penultimate", "capacity", "random", "loto", "nested")


def report(summary: pd.DataFrame, paired: pd.DataFrame, picks: pd.DataFrame) -> None:
    """Per measure a world x ranker table of point [lo, hi]; the paired differences; picks."""
    worlds = list(dict.fromkeys(summary.world))
    def cell(r) -> str:
        if not np.isfinite(r.point):
            return "n/a"
        return f"{r.point:6.2f} [{r.lo:5.2f},{r.hi:5.2f}]" if np.isfinite(r.lo) else f"{r.point:6.2f}"
    ceil = summary[summary.ranker == "noise_ceiling"].set_index("world")
    print("\nnoise ceiling (mean over targets [min, max]): " + ", ".join(
        f"{w} {r.point:.3f} [{r.lo:.3f}, {r.hi:.3f}]" for w, r in ceil.iterrows()))
    body = summary[summary.ranker != "noise_ceiling"]
    for m in SHOWN:
        t = body[body.measure == m]
        order = [r for r in HEADLINE if r in set(t.ranker)]
        order += sorted(set(t.ranker) - set(order)) if m == "pearson" else []
        rows = []
        for r in order:
            cells = {w: t[(t.ranker == r) & (t.world == w)] for w in worlds}
            rows.append({"ranker": r, **{w: cell(c.iloc[0]) if len(c) else "" for w, c in cells.items()}})
        print(f"\n{m} (mean over targets; [{LEVEL:.0%} bootstrap interval]; world 'mean' = over worlds):")
        print(pd.DataFrame(rows).to_string(index=False))
    print(f"\nSEG-OTCE minus ranker, Pearson [{LEVEL:.0%} paired interval]; * = interval excludes 0:")
    rows = []
    for r in [x for x in HEADLINE if x in set(paired.ranker)]:
        c = {w: paired[(paired.ranker == r) & (paired.world == w)] for w in worlds}
        rows.append({"ranker": r, **{w: (cell(x.iloc[0]) + ("*" if x.iloc[0].lo > 0 or x.iloc[0].hi < 0 else ""))
                                     if len(x) else "" for w, x in c.items()}})
    print(pd.DataFrame(rows).to_string(index=False))
    print("\nrecommended-ranker picks:")
    for (w, k), g in picks.groupby(["world", "kind"], sort=False):
        print(f"  {w:<10} {k:<7} " + ", ".join(g.pick))


if __name__ == "__main__":
    raise SystemExit(main())
