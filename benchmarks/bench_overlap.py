"""Overlapped vs staged on the demo job: end-to-end wall time, overlap share, same matrix.

Runs the demo job of an already built demo workdir (``--demo DIR``: what ``segotce-ray demo``
leaves; its world, zoo and ground truth are linked, never rebuilt) on a fresh store in each
mode, each in a fresh process (so each pays the same Ray start-up and actor start-up):

- **staged**: ``run_job(overlap=False)`` — every pool extracted, then every repetition scored
  (the order before scoring overlapped extraction);
- **overlapped**: ``run_job()`` — a pair's repetitions start once its two pools are published.

Prints per run the job's stage timings, the end-to-end time (process start to report
written) and the share of repetitions that started before the last pool was published; then
the ratio staged / overlapped, whether the two ``matrix.parquet`` agree on every score column
(bit for bit), and the machine's load average around each run (other work on the machine
slows both modes).

Usage::

    python benchmarks/bench_overlap.py --demo segotce-demo
    python benchmarks/bench_overlap.py --demo segotce-demo --order overlapped,staged --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LINKED = ("world", "demo_zoo", "ground_truth.csv", "ground_truth.json")


def prepare(demo: Path, into: Path) -> Path:
    """A workdir with the demo's spec and links to its world, zoo and ground truth: a fresh
    store and runs folder."""
    into.mkdir(parents=True)
    shutil.copy(demo / "demo.yaml", into / "demo.yaml")
    for name in LINKED:
        if (demo / name).exists():
            (into / name).symlink_to((demo / name).resolve())
    return into / "demo.yaml"


def child(mode: str, spec_path: str) -> None:
    """One run in this process; prints one JSON line."""
    t0 = time.perf_counter()
    from segotce_ray.job.run import run_job
    from segotce_ray.spec.build import load_spec

    spec = load_spec(spec_path)
    result = run_job(spec, run_id=mode, progress=False, overlap=(mode == "overlapped"))
    info = json.loads((result.run_dir / "run.json").read_text())
    print(json.dumps({"mode": mode, "status": result.status, "wall_s": time.perf_counter() - t0,
                      "timings": info["timings"], "timeline": info.get("timeline", {}),
                      "matrix": str(result.run_dir / "matrix.parquet")}), flush=True)


def run_one(mode: str, spec: Path) -> dict:
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(spec)], check=True,
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    wall = time.perf_counter() - t0
    got = json.loads(out.stdout.strip().splitlines()[-1])
    got.update(process_s=wall, load_before=load0, load_after=os.getloadavg())
    return got


def same_matrix(a: str, b: str) -> str:
    import pandas as pd

    from segotce_ray.scoring.rows import ROW_KEY, TIME_COLUMNS, results_frame

    x, y = (results_frame(pd.read_parquet(p)).drop(columns=TIME_COLUMNS)
            .sort_values(ROW_KEY).reset_index(drop=True) for p in (a, b))
    try:
        pd.testing.assert_frame_equal(x, y, check_exact=True)
    except AssertionError as exc:
        return f"DIFFERENT: {str(exc).splitlines()[0]}"
    return f"identical ({len(x)} rows, every column but {', '.join(TIME_COLUMNS)})"


def report(r: dict) -> None:
    t, line = r["timings"], r["timeline"]
    ran, before = line.get("repetitions_run") or 0, line.get("started_before_last_pool") or 0
    print(f"{r['mode']:>10}: {r['status']}, end to end {r['process_s']:.1f} s (run_job total "
          f"{t['total']:.1f} s: extract {t['extract']:.1f}, score {t['score']:.1f}, "
          f"matrix {t['matrix']:.1f}, report {t.get('report', 0):.1f}); {before} of {ran} "
          f"repetitions ({100 * before / max(ran, 1):.0f}%) started before the last pool was "
          f"published; load {r['load_before'][0]:.1f} → {r['load_after'][0]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, help="a built demo workdir (holds demo.yaml)")
    ap.add_argument("--order", default="staged,overlapped", help="modes, in run order")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each mode")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "SPEC"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    if args.demo is None or not (args.demo / "demo.yaml").is_file():
        ap.error("--demo must name a built demo workdir (run `segotce-ray demo` first)")
    modes = [m.strip() for m in args.order.split(",")]
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    root = Path(tempfile.mkdtemp(prefix="bench_overlap_"))
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    try:
        for i in range(args.repeat):
            for mode in modes:
                r = run_one(mode, prepare(args.demo, root / f"{mode}{i}"))
                runs[mode].append(r)
                report(r)
        if {"staged", "overlapped"} <= set(runs):
            best = {m: min(r["process_s"] for r in runs[m]) for m in ("staged", "overlapped")}
            print(f"staged / overlapped, end to end (best of {args.repeat}): "
                  f"{best['staged'] / best['overlapped']:.2f}×")
            print("matrix:", same_matrix(runs["staged"][0]["matrix"], runs["overlapped"][0]["matrix"]))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
