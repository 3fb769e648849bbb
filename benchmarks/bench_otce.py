"""One SEG-OTCE repetition: ours (default solver) against POT's exact ``ot.emd``, same samples.

Inputs: two shifted Gaussian mixtures, 19 classes per side, D = 256 and D = 19 (logit-like).
For each N it prints our time (converged to the default tolerance), POT's time (cost matrix
+ ``ot.emd``), the time ratio, |Δscore| against the exact coupling, our iterations, and our
peak memory against the 3·N²·4-byte goal. With ``--pot-log`` it also checks the score against
POT's ``ot.sinkhorn(method="sinkhorn_log")`` at small N (the entropic score of the definition).
On CUDA it reports time per repetition against the memory-bandwidth bound
(8·N² bytes per dense scaling iteration × iterations ÷ bandwidth).

    python benchmarks/bench_otce.py                       # N ∈ {1000, 2500, 5000, 10000}
    python benchmarks/bench_otce.py --sizes 1000 --pot-log
    python benchmarks/bench_otce.py --device cuda --no-emd --bandwidth 3.35e12
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def mixture(n: int, d: int, shift: float, seed: int, classes: int = 19):
    means = np.random.default_rng(1234 + d).normal(size=(classes, d)) * 2.0
    r = np.random.default_rng(seed)
    y = r.integers(0, classes, n)
    x = means[y] + r.normal(size=(n, d)) + shift
    return x.astype(np.float32), y


def _ours(args, queue):
    import torch

    from segotce_ray import otce_score

    n, d, device = args
    fs, ys = mixture(n, d, 0.0, 1)
    ft, yt = mixture(n, d, 0.5, 2)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    r = otce_score(fs, ys, ft, yt, n_pixels=n, repetitions=1, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    queue.put((dt, float(r.scores[0]), int(r.iterations[0]), bool(r.converged[0]), peak))


def run_ours(n: int, d: int, device: str):
    """Run in a fresh process so the peak-RSS figure is ours alone."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_ours, args=((n, d, device), q))
    p.start()
    out = q.get()
    p.join()
    return out


def run_emd(n: int, d: int):
    import ot

    from segotce_ray.metrics.otce import conditional_entropy

    fs, ys = mixture(n, d, 0.0, 1)
    ft, yt = mixture(n, d, 0.5, 2)
    t0 = time.perf_counter()
    c = ot.dist(fs.astype(np.float64), ft.astype(np.float64))
    p = ot.emd(ot.unif(n), ot.unif(n), c, numItermax=100_000_000)
    dt = time.perf_counter() - t0
    j = np.eye(19)[ys].T @ p @ np.eye(19)[yt]
    return dt, -conditional_entropy(j / j.sum())


def run_pot_log(n: int, d: int, eps: float = 0.1):
    import ot

    from segotce_ray.metrics.otce import conditional_entropy

    fs, ys = mixture(n, d, 0.0, 1)
    ft, yt = mixture(n, d, 0.5, 2)
    c = ot.dist(fs.astype(np.float64), ft.astype(np.float64))
    t0 = time.perf_counter()
    p = ot.sinkhorn(ot.unif(n), ot.unif(n), c, eps, method="sinkhorn_log", numItermax=20_000,
                    stopThr=1e-6, warn=False)
    dt = time.perf_counter() - t0
    j = np.eye(19)[ys].T @ p @ np.eye(19)[yt]
    err = np.abs(p.sum(1) - 1 / n).sum() + np.abs(p.sum(0) - 1 / n).sum()
    return dt, -conditional_entropy(j / j.sum()), err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2500, 5000, 10000])
    ap.add_argument("--dims", type=int, nargs="+", default=[256, 19])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-emd", action="store_true", help="skip POT's ot.emd reference")
    ap.add_argument("--pot-log", action="store_true", help="also run POT sinkhorn_log (slow)")
    ap.add_argument("--bandwidth", type=float, default=None,
                    help="device memory bandwidth in B/s for the bound (CUDA)")
    args = ap.parse_args()
    import torch

    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""))
    hdr = (f"{'D':>4} {'N':>6} {'ours s':>8} {'iters':>6} {'conv':>5} {'peak/3N²4':>9} "
           f"{'emd s':>8} {'speed-up':>8} {'|Δscore|':>9}")
    if args.bandwidth:
        hdr += f" {'bound s':>8} {'×bound':>7}"
    print(hdr)
    for d in args.dims:
        for n in args.sizes:
            t_ours, s_ours, iters, conv, peak = run_ours(n, d, args.device)
            goal = 3 * n * n * 4
            line = f"{d:>4} {n:>6} {t_ours:>8.2f} {iters:>6} {str(conv):>5} {peak / goal:>9.2f} "
            if args.no_emd:
                line += f"{'-':>8} {'-':>8} {'-':>9}"
            else:
                t_emd, s_emd = run_emd(n, d)
                line += f"{t_emd:>8.2f} {t_emd / t_ours:>7.1f}× {abs(s_ours - s_emd):>9.2e}"
            if args.bandwidth:
                bound = iters * 8 * n * n / args.bandwidth
                line += f" {bound:>8.3f} {t_ours / bound:>6.1f}×"
            print(line, flush=True)
            if args.pot_log and n <= 2000:
                t_log, s_log, err = run_pot_log(n, d)
                print(f"       POT sinkhorn_log: {t_log:.1f} s, |Δscore| vs ours {abs(s_log - s_ours):.2e}"
                      f" (its marginal error {err:.1e})", flush=True)


if __name__ == "__main__":
    main()
