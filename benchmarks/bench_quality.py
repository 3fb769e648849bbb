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

from segotce_ray.datasets import open_dataset  # noqa: E402
from segotce_ray.demo.worlds import WORLDS, build_world  # noqa: E402
from segotce_ray.metrics.correlation import measures_for_target  # noqa: E402
from segotce_ray.metrics.otce import otce_score  # noqa: E402
from segotce_ray.models import ModelSpec, load_model  # noqa: E402
from segotce_ray.sampling import sample_feature_maps, sample_pixels, stable_seed  # noqa: E402
from segotce_ray.spec import load_spec  # noqa: E402

N_PIXELS, REPETITIONS, SEED = 1000, 3, 0
LAYERS = ("penultimate", "logits", "probs")
COST_SCALES = ("none", "mean", "max")
EPSILONS = (0.01, 0.1, 1.0)
SAMPLINGS = ("uniform", "class_balanced")
SHOWN = ("pearson", "kendall_tau", "regret")
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


def quality(scores: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """Mean over targets of Pearson, Kendall τ_b and top-1 regret (mIoU points)."""
    merged = scores.merge(truth, on=["model", "target"])
    per = [measures_for_target(g.sort_values("model")["score"].to_numpy(),
                               g.sort_values("model")["value"].to_numpy())
           for _, g in merged.groupby("target", sort=True)]
    return {m: float(np.nanmean([p[m] for p in per])) for m in SHOWN}


def peer_rows(spec, pools, truth, world: str) -> list[dict]:
    """Every peer on the world's target pools: feature peers on each feature space, NCE/LEEP
    on probs; K draws of N target pixels seeded per (model, target, k)."""
    from segotce_ray.metrics.peers import PEER_METRICS, compute_metric

    out = []
    for metric, info in PEER_METRICS.items():
        for layer in (LAYERS if info.inputs == "features" else ("probs",)):
            recs = []
            for name in spec.models:
                for target in spec.targets:
                    p = pools[(name, target)]
                    t0, vals = time.perf_counter(), []
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
                    recs.append({"model": name, "target": target, "score": float(np.mean(vals)),
                                 "seconds": time.perf_counter() - t0})
            sc = pd.DataFrame(recs)
            out.append({"world": world, "metric": metric, "layer": layer, **quality(sc, truth),
                        "seconds_per_pair": float(sc.seconds.mean())})
    return out


def pick_default(table: pd.DataFrame, worlds: list[str]) -> pd.Series:
    """The protocol's rule: best mean-over-worlds Pearson among eligible settings scored on
    every world; within 0.01 of it, lower mean regret, then fewer seconds per pair."""
    keys = ["layer", "cost_scale", "epsilon", "sampling", "solver"]
    t = table[table.eligible]
    complete = t.groupby(keys).world.nunique() == len(worlds)
    mean = t.groupby(keys)[[*SHOWN, "seconds_per_pair"]].mean()[complete].reset_index()
    near = mean[mean.pearson >= mean.pearson.max() - 0.01]
    return near.sort_values(["regret", "seconds_per_pair"]).iloc[0]


def build_worlds(names: list[str], root: Path, device: str, workers: int | None) -> dict:
    """name -> (spec, truth, pools key, pools); worlds sharing pools share the arrays."""
    worlds, by_key = {}, {}
    for name in names:
        t0 = time.perf_counter()
        spec = load_spec(build_world(WORLDS[name], root, workers=workers))
        truth = pd.read_csv(spec.ground_truth)
        key, pools = world_pools(spec, root, device)
        pools = by_key.setdefault(key, pools)
        worlds[name] = (spec, truth, key, pools)
        spread = truth.groupby("target").value.agg(lambda v: v.max() - v.min())
        print(f"world {name}: {len(spec.models)} models x {len(spec.targets)} targets, ready in "
              f"{time.perf_counter() - t0:.0f}s; ground-truth spread per target (mIoU points): "
              + ", ".join(f"{t} {v:.1f}" for t, v in spread.items()), flush=True)
    return worlds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=".segotce_worlds", help="worlds, zoos and pool caches")
    p.add_argument("--worlds", nargs="*", default=list(WORLDS), choices=list(WORLDS))
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="uniform sampling, eps in {0.1, 1}")
    p.add_argument("--budget-s", type=float, default=3600.0, help="stop starting settings after this")
    p.add_argument("--out", default=None, help="folder for the CSV results")
    p.add_argument("--workers", type=int, default=None, help="zoo/ground-truth worker processes")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--only", nargs="*", default=None, metavar="LAYER:SCALE:EPS:SAMPLING",
                   help="score only these grid settings, in this order (a partial table)")
    a = p.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    root = Path(a.workdir).expanduser().absolute()
    out = Path(a.out) if a.out else root / "bench_quality"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"device {device}; torch {torch.__version__}; {os.cpu_count()} CPUs; "
          f"N={N_PIXELS}, K={REPETITIONS}")
    worlds = build_worlds(a.worlds, root, device, a.workers)
    peers = pd.DataFrame([r for w, (spec, truth, _, pools) in worlds.items() if not a.no_peers
                          for r in peer_rows(spec, pools, truth, w)])
    if not peers.empty:
        peers.to_csv(out / "peers.csv", index=False)
    rows, skipped, t_grid = [], [], time.perf_counter()
    settings = grid(a.quick)
    if a.only is not None:  # e.g. --only probs:mean:0.1:uniform (emd rows: EPS = 0)
        by_name = {f"{s['layer']}:{s['cost_scale']}:{s['epsilon']}:{s['sampling']}": s for s in settings}
        settings = [by_name[f"{l}:{c}:{float(e)}:{u}"] for l, c, e, u in (o.split(":") for o in a.only)]
    for s in settings:
        if time.perf_counter() - t_grid > a.budget_s:
            skipped.append(s)
            continue
        cache: dict = {}  # worlds that share pools share the scores
        for w, (spec, truth, key, pools) in worlds.items():
            if key not in cache:
                cache[key] = score_setting(spec, pools, s, device)
            sc = cache[key]
            rows.append({"world": w, **s, **quality(sc, truth),
                         "seconds_per_pair": float(sc.seconds.mean())})
        pd.DataFrame(rows).to_csv(out / "grid.csv", index=False)
        print(f"  {s['layer']:<11} {s['cost_scale']:<4} eps={s['epsilon']:<4} {s['sampling']:<14} "
              f"{s['solver']:<8} done ({time.perf_counter() - t_grid:.0f}s)", flush=True)
    report(pd.DataFrame(rows), peers, list(worlds), skipped, partial=a.only is not None or bool(skipped))
    print(f"\nresults in {out}; total {time.perf_counter() - t0:.0f}s")
    return 0


def report(table: pd.DataFrame, peers: pd.DataFrame, worlds: list[str], skipped: list,
           partial: bool = False) -> None:
    """Print world x setting -> measures, the mean over worlds, the pick, and the peers."""
    fmt = ("display.width", 250, "display.max_rows", 1000, "display.float_format", "{:.3f}".format)
    keys = ["layer", "cost_scale", "epsilon", "sampling", "solver"]
    with pd.option_context(*fmt):
        wide = table.pivot_table(index=keys, columns="world", values=list(SHOWN))
        wide.columns = [f"{m}:{w}" for m, w in wide.columns]
        mean = table.groupby(keys)[[*SHOWN, "seconds_per_pair"]].mean()
        mean.columns = [f"{c}:mean" for c in mean.columns]
        both = wide.join(mean).sort_values("pearson:mean", ascending=False)
        print("\nSEG-OTCE: world x setting (mean over targets; regret in mIoU points), "
              "sorted by the mean over worlds:")
        print(both.reset_index().to_string(index=False))
        if skipped:
            print(f"skipped for the time budget: {len(skipped)} settings")
        best = pick_default(table, worlds)
        what = ("best of the settings scored: a PARTIAL grid, not the protocol's pick"
                if partial else "best mean over worlds")
        print(f"\npicked default ({what}):", best[keys].to_dict(),
              {m: round(float(best[m]), 3) for m in SHOWN})
        chosen = table.merge(pd.DataFrame([best[keys]]), on=keys)
        if not peers.empty:
            top = peers.sort_values("pearson", ascending=False).groupby("world").head(1)
            print("\nper world: default SEG-OTCE vs the best peer (metric/layer)")
            for w in worlds:
                c = chosen[chosen.world == w].iloc[0]
                b = top[top.world == w].iloc[0]
                print(f"  {w:<10} seg-otce pearson {c.pearson:.3f} regret {c.regret:.2f} | best peer "
                      f"{b.metric}/{b.layer} pearson {b.pearson:.3f} regret {b.regret:.2f} | "
                      f"{'beats' if c.pearson >= b.pearson else 'below'}")
            pw = peers.pivot_table(index=["metric", "layer"], columns="world", values="pearson")
            pw["mean"] = pw.mean(axis=1)
            sec = peers.groupby(["metric", "layer"]).seconds_per_pair.mean()
            print("\npeers: Pearson per world and mean; seconds per pair")
            print(pw.join(sec).sort_values("mean", ascending=False).reset_index().to_string(index=False))


if __name__ == "__main__":
    raise SystemExit(main())
