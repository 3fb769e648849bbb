"""Quality benchmark over several worlds: which SEG-OTCE setting predicts fine-tuned transfer?

Evaluation protocol (fixed in this docstring and committed before any score was looked at)
----------------------------------------------------------------------------------------

Worlds. Four worlds from the demo generator (``segotce_ray.demo``: world, zoo, fine-tuning
ground truth), each defined by a :class:`segotce_ray.demo.worlds.WorldProtocol`:

- ``demo``       — the demo as shipped: world seed 0, zoo = 7 tiny nets (one per source
  domain) + 1 LR-ASPP (a capacity outlier); ground truth = fine-tune 20 steps (batch 8,
  lr 1e-3) on the 16 labelled target images, mIoU (%) on 32 held-out images.
- ``same_arch``  — world seed 1 (new images of every domain, same domain styles), zoo = the
  7 tiny nets only (no capacity outlier), ground truth as ``demo``.
- ``few_shot``   — world and zoo of ``demo``; the user has only the first 4 labelled images
  of each target: they are the fine-tuning set (10 steps, batch 4, lr 1e-3) and the scoring
  pool; mIoU on the same 32 held-out images.
- ``long_ft``    — world and zoo of ``demo``; ground truth = fine-tune 60 steps (3x demo;
  batch 8, lr 1e-3) on the 16 labelled images.

Each world's ground truth ships in ``segotce_ray/demo/data/worlds/<world>.csv`` with a
``.json`` holding the fingerprint of what produced it (generator/zoo/ground-truth versions,
world config and seeds, zoo weights hashes, recipe, image count) and the command that
regenerates it (``python -m segotce_ray.demo.worlds --world <name>``).

Pools. Per (model, dataset) 1000 pixels per labelled image (uniform among valid pixels,
seeded per image), features float16 as in the store, extracted in-process with the
pipeline's own pieces; each pool keeps the penultimate features, the logits and the source
head's softmax (``probs``).

Grid (SEG-OTCE, N = 1000 pixels per side, K = 3 repetitions, job seed 0; every world is
scored with the same grid):

- layer (feature space) in {penultimate, logits, probs}
- cost_scale in {none, mean, max}
- epsilon in {0.01, 0.1, 1.0} (solver sinkhorn)
- sampling in {uniform, class_balanced}

(54 settings) plus, per (layer, sampling), the exact coupling (solver emd) as a reference
row; emd rows are printed but are not eligible as the default. ``--quick``: sampling uniform
only and epsilon in {0.1, 1.0} (18 settings + 3 emd rows).
Peers (LogME, LEEP, NCE, N-LEEP, H-score, shrunk H-score, GBC, TransRate) on the same
target pools, K = 3 draws of N = 1000 target pixels; feature peers on each of the three
feature spaces, NCE/LEEP on probs.

Measures. Per target: Pearson r, Kendall tau_b and top-1 regret (mIoU points of the true
best minus the ground truth of the top-scored model) between the K-mean scores and the
ground truth. Per world: the mean over its targets. Over worlds: the unweighted mean of the
per-world means (each world counts once). Seconds per pair: mean wall time of the K
repetitions of one (model, target) pair on this machine.

How the default is picked. Among the eligible (sinkhorn) settings, the one with the highest
mean-over-worlds Pearson; settings within 0.01 of it are separated by the lower
mean-over-worlds regret, then by fewer seconds per pair. Never the best on a single world.
Its (layer, cost_scale, epsilon, sampling) become the defaults of ``otce:`` in job specs.
The report states, per world, the default's Pearson and regret and whether its Pearson
reaches that of the best peer (metric, input) of the same world.

    PYTHONPATH=. python benchmarks/bench_quality.py --workdir /tmp/segotce-worlds
    PYTHONPATH=. python benchmarks/bench_quality.py --quick --worlds demo same_arch
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
from segotce_ray.demo.build import DEMO_OTCE, build_demo  # noqa: E402
from segotce_ray.metrics.correlation import measures_for_target  # noqa: E402
from segotce_ray.metrics.otce import otce_score  # noqa: E402
from segotce_ray.models import ModelSpec, load_model  # noqa: E402
from segotce_ray.sampling import sample_feature_maps, sample_pixels, stable_seed  # noqa: E402
from segotce_ray.spec import load_spec  # noqa: E402

LAYERS = ("penultimate", "logits")
NS = (1000, 2500, 10000)
EPSILONS = (0.01, 0.1, 1.0)
KS = (1, 5, 10)
SHOWN = ("pearson", "spearman", "kendall_tau", "weighted_tau", "regret")


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


def score_setting(spec, pools, truth: pd.DataFrame, layer: str, n: int, eps: float, k_max: int,
                  seed: int, device: str) -> pd.DataFrame:
    """Long table: model, target, k, score (mean of the first k repetitions), seconds."""
    rows = []
    for name, m in spec.models.items():
        src = pools[(name, m.source)]
        for target in spec.targets:
            tgt = pools[(name, target)]
            t0 = time.perf_counter()
            try:
                r = otce_score(torch.from_numpy(src[layer]).to(device), src["labels"],
                               torch.from_numpy(tgt[layer]).to(device), tgt["labels"],
                               n_pixels=n, repetitions=k_max, epsilon=eps,
                               seed=stable_seed(seed, name, target), device=device)
                scores, conv, err = r.scores, r.converged, ""
            except (ValueError, RuntimeError) as exc:  # one failing pair is reported, not fatal
                print(f"  {layer} N={n} eps={eps}: {name} -> {target} failed: {exc}", file=sys.stderr)
                scores, conv, err = np.full(k_max, np.nan), np.zeros(k_max, bool), str(exc)
            dt = time.perf_counter() - t0
            for k in KS:
                if k <= k_max:
                    rows.append({"model": name, "target": target, "k": k,
                                 "score": float(np.mean(scores[:k])), "seconds": dt,
                                 "converged": bool(np.all(conv[:k])), "error": err})
    return pd.DataFrame(rows)


def quality(scores: pd.DataFrame, truth: pd.DataFrame, column: str = "score") -> pd.DataFrame:
    """Per-target measures (rows) + a '__mean__' row."""
    merged = scores.merge(truth, on=["model", "target"])
    out = []
    for target, grp in merged.groupby("target", sort=True):
        grp = grp.sort_values("model")
        meas = measures_for_target(grp[column].to_numpy(), grp["value"].to_numpy())
        out.append({"target": target, **{k: meas[k] for k in SHOWN}})
    df = pd.DataFrame(out)
    mean = {"target": "__mean__", **{k: float(df[k].mean()) for k in SHOWN}}
    return pd.concat([df, pd.DataFrame([mean])], ignore_index=True)


def peers_table(spec, pools, truth) -> pd.DataFrame | None:
    try:
        from segotce_ray.metrics.peers import PEER_METRICS, compute_metric
    except ImportError:
        return None
    rows = []
    for metric, info in PEER_METRICS.items():
        for layer in LAYERS if info.inputs == "features" else ("probs",):
            recs = []
            for name in spec.models:
                for target in spec.targets:
                    p = pools[(name, target)]
                    try:
                        kw = {"probs": p["probs"].astype(np.float32)} if info.inputs == "probs" else \
                            {"features": p[layer].astype(np.float32)}
                        v = compute_metric(metric, labels=p["labels"].astype(np.int64), **kw)
                    except Exception as exc:  # a failing peer is reported, not fatal
                        print(f"  peer {metric} {name}->{target}: {exc}", file=sys.stderr)
                        v = np.nan
                    recs.append({"model": name, "target": target, "score": v})
            q = quality(pd.DataFrame(recs), truth)
            rows.append({"metric": metric, "input": layer,
                         **q[q.target == "__mean__"].iloc[0][list(SHOWN)].to_dict()})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=".segotce_demo")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="N in {1000, 2500}, K <= 5")
    p.add_argument("--seeds", type=int, nargs="*", default=[1, 2], help="extra seeds for stability")
    p.add_argument("--budget-s", type=float, default=3600.0, help="stop scoring new settings after this")
    p.add_argument("--out", default=None, help="folder for the CSV/JSON results")
    p.add_argument("--workers", type=int, default=None, help="zoo/ground-truth worker processes")
    p.add_argument("--no-peers", action="store_true", help="skip the peer metrics")
    p.add_argument("--smoke", action="store_true", help="tiny N/K grid: checks the script runs")
    p.add_argument("--only", nargs="*", default=None, metavar="LAYER:N:EPS",
                   help="after the default, score only these settings")
    a = p.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    out = Path(a.out) if a.out else Path(a.workdir) / "bench_quality"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    job = build_demo(a.workdir, workers=a.workers)
    spec = load_spec(job)
    t_build = time.perf_counter() - t0
    truth = pd.read_csv(spec.ground_truth)
    print(f"device {device}; demo built in {t_build:.1f}s; {len(spec.models)} models x "
          f"{len(spec.targets)} targets; torch {torch.__version__}; {os.cpu_count()} CPUs")
    print("ground truth (mIoU %):")
    print(truth.pivot(index="model", columns="target", values="value").round(1).to_string())
    t1 = time.perf_counter()
    key = json.dumps({"models": spec.to_dict()["models"], "datasets": spec.to_dict()["datasets"]},
                     sort_keys=True, default=str)
    cache = Path(a.workdir) / f"bench_pools_{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"
    if cache.exists():
        flat = np.load(cache)
        pools = {}
        for key in flat.files:
            model, dataset, field = key.split("|")
            pools.setdefault((model, dataset), {})[field] = flat[key]
    else:
        pools = extract(spec, device, 1000, seed=0)
        np.savez(cache, **{f"{m}|{d}|{f}": v for (m, d), pool in pools.items() for f, v in pool.items()})
    print(f"pools ready in {time.perf_counter() - t1:.1f}s")
    if a.smoke:  # a fast end-to-end check of this script, not a measurement
        global NS, EPSILONS, KS
        NS, EPSILONS, KS = (300,), (1.0,), (1,)
        DEMO_OTCE.update(n_pixels=300, epsilon=1.0, repetitions=1)

    d_layer, d_n, d_eps = DEMO_OTCE["layer"], DEMO_OTCE["n_pixels"], DEMO_OTCE["epsilon"]
    ns = NS[:2] if a.quick else NS
    k_max = min(5 if a.quick else 10, max(KS))
    # order: the default, one factor at a time around it, then the rest of the grid
    grid = [(d_layer, d_n, d_eps)]
    grid += [(l, d_n, d_eps) for l in LAYERS] + [(d_layer, n, d_eps) for n in ns] + \
            [(d_layer, d_n, e) for e in EPSILONS]
    grid += list(itertools.product(LAYERS, ns, EPSILONS))
    grid = list(dict.fromkeys(grid))
    if a.only:  # restrict the grid after the default, e.g. --only penultimate:1000:0.01
        wanted = {(l, int(n), float(e)) for l, n, e in (o.split(":") for o in a.only)}
        grid = grid[:1] + [g for g in grid[1:] if g in wanted]
    results, skipped, all_scores = [], [], []
    t2 = time.perf_counter()
    per_pixel2: list[float] = []  # seconds per setting / N^2, to predict the next setting

    def run_setting(layer: str, n: int, eps: float) -> pd.DataFrame | None:
        left = a.budget_s - (time.perf_counter() - t2)
        predicted = max(per_pixel2, default=0.0) * n * n
        if left <= 0 or predicted > left:
            skipped.append((layer, n, eps))
            return None
        ts = time.perf_counter()
        sc = score_setting(spec, pools, truth, layer, n, eps, k_max, 0, device)
        dt = time.perf_counter() - ts
        per_pixel2.append(dt / (n * n))
        sc = sc.assign(layer=layer, n=n, epsilon=eps, seed=0)
        all_scores.append(sc)
        for k in sorted(sc.k.unique()):
            q = quality(sc[sc.k == k], truth)
            mean = q[q.target == "__mean__"].iloc[0]
            results.append({"layer": layer, "n": n, "epsilon": eps, "k": k,
                            **{m: float(mean[m]) for m in SHOWN},
                            "converged": float(sc[sc.k == k].converged.mean()),
                            "seconds_per_pair": float(sc[sc.k == k].seconds.mean())})
        print(f"  {layer:<11} N={n:<6} eps={eps:<5} done in {dt:6.1f}s", flush=True)
        pd.concat(all_scores).to_csv(out / "scores.csv", index=False)
        pd.DataFrame(results).to_csv(out / "grid.csv", index=False)
        return sc

    fmt = {"display.width": 200, "display.max_rows": 500, "display.float_format": "{:.3f}".format}
    default = run_setting(*grid[0])
    d_k = max(k for k in KS if k <= min(DEMO_OTCE["repetitions"], k_max))
    q = quality(default[default.k == d_k], truth)
    with pd.option_context(*itertools.chain.from_iterable(fmt.items())):
        print(f"\nper target at the demo default (layer={d_layer}, N={d_n}, eps={d_eps}, K={d_k}):")
        print(q.to_string(index=False))
        arch = pd.Series({n: m.architecture for n, m in spec.models.items()})
        main_arch = arch.value_counts().index[0]
        same = default[(default.k == d_k) & default.model.map(arch).eq(main_arch)]
        print(f"\nsame setting, only the {int((arch == main_arch).sum())} models of architecture "
              f"{main_arch} (no cross-architecture comparison):")
        print(quality(same, truth).to_string(index=False))
    # stability across seeds at the default
    seeds_q, seeds_sc = [q.assign(seed=0)], [default[default.k == d_k].assign(seed=0)]
    for s in a.seeds:
        sc = score_setting(spec, pools, truth, d_layer, d_n, d_eps, d_k, s, device)
        sc = sc[sc.k == d_k].assign(seed=s)
        seeds_sc.append(sc)
        seeds_q.append(quality(sc, truth).assign(seed=s))
    if len(seeds_q) > 1:
        sq = pd.concat(seeds_q)
        sq = sq[sq.target == "__mean__"]
        print(f"\nstability over seeds {[0, *a.seeds]} at the default (mean over targets): mean ± std")
        for m in SHOWN:
            print(f"  {m:<13} {sq[m].mean():.3f} ± {sq[m].std(ddof=0):.3f}")
        allsc = pd.concat(seeds_sc)
        rng_t = allsc.groupby(["target", "seed"]).score.agg(lambda v: v.max() - v.min()).groupby("target").mean()
        sd = allsc.groupby(["model", "target"]).score.std(ddof=0).reset_index()
        sd["rel"] = sd.score / sd.target.map(rng_t)
        print(f"  score std over seeds / score range of the target: mean {sd.rel.mean():.3f}, "
              f"max {sd.rel.max():.3f}")
        allsc.to_csv(out / "seeds.csv", index=False)
    t_peers = time.perf_counter()
    peers = peers_table(spec, pools, truth) if not a.no_peers else None
    if peers is not None:
        print(f"\npeers scored in {time.perf_counter() - t_peers:.1f}s")
        peers.to_csv(out / "peers.csv", index=False)
    for setting in grid[1:]:
        run_setting(*setting)
    res = pd.DataFrame(results)
    with pd.option_context(*itertools.chain.from_iterable(fmt.items())):
        print("\nmean over targets per setting (regret in mIoU points):")
        print(res.to_string(index=False))
        if skipped:
            print(f"skipped for the time budget: {skipped}")
        if peers is not None:
            best = res.sort_values("pearson", ascending=False).iloc[0]
            seg = pd.DataFrame([{"metric": "seg-otce (demo default)", "input": d_layer,
                                 **q[q.target == "__mean__"].iloc[0][list(SHOWN)].to_dict()},
                                {"metric": f"seg-otce (best: N={int(best.n)}, eps={best.epsilon}, "
                                           f"K={int(best.k)})", "input": best.layer,
                                 **{m: best[m] for m in SHOWN}}])
            print("\nSEG-OTCE and peers (mean over targets):")
            print(pd.concat([seg, peers], ignore_index=True).to_string(index=False))
    (out / "meta.json").write_text(json.dumps({"device": device, "build_s": t_build,
                                               "torch": torch.__version__, "skipped": skipped}))
    print(f"\nresults in {out}; total {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
