"""Driver memory as pools grow: the same job with 1× and 10× the pool bytes, peak RSS of the driver.

A job of tiny models (``segotce_ray.demo.zoo:tiny_segnet``) on a source and two targets
(folder datasets written here), scored with SEG-OTCE and LogME at a fixed N; the 10× run
draws ten times the pixels per image (``extraction.pixels_per_image``), so every pool holds
ten times the rows and bytes while the chunks, pairs and repetitions stay the same. Each run
is a fresh process on a fresh store (extraction overlapped with scoring, the default); it
reports its peak resident memory (``getrusage(RUSAGE_SELF).ru_maxrss``: the driver process
alone — Ray's workers are other processes), the bytes the driver received from the
extraction pipeline and the shard bytes the workers wrote (``run.json`` → ``timeline``).

Prints both runs, the RSS growth (goal: ≤ 50 MiB for 10× the pool bytes) and the driver
bytes as a share of the pool bytes (goal: ≤ 1%), with the machine's load average.

Usage::

    python benchmarks/bench_driver_rss.py                      # 12 images per dataset
    python benchmarks/bench_driver_rss.py --images 24 --scale 10
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DATASETS = ("source", "target1", "target2")


def write_job(root: Path, images: int, pixels: int, size: tuple[int, int]) -> Path:
    import yaml
    from bench_extract import CLASSES, write_folder_dataset

    datasets = {}
    for i, name in enumerate(DATASETS):                 # written once, shared by both runs
        datasets[name] = dict(write_folder_dataset(root.parent / "data" / name, images, size, seed=i)
                              if not (root.parent / "data" / name).exists() else
                              {"format": "folder", "root": str(root.parent / "data" / name),
                               "label_map": CLASSES, "ignore_index": 255})
    spec = {"name": "rss", "seed": 0, "store": "store", "output": "runs",
            "metrics": ["otce", "logme"],
            "otce": {"n_pixels": 500, "repetitions": 2, "epsilon": 1.0, "solver": "sinkhorn"},
            "extraction": {"pixels_per_image": pixels, "batch_size": 4},
            "datasets": datasets,
            "models": {f"tiny{i}": {"architecture": "segotce_ray.demo.zoo:tiny_segnet",
                                    "num_classes": len(CLASSES), "source": "source"}
                       for i in range(3)},
            "targets": ["target1", "target2"]}
    root.mkdir(parents=True)
    (root / "job.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root / "job.yaml"


def child(spec_path: str) -> None:
    from segotce_ray.job.run import run_job
    from segotce_ray.spec.build import load_spec

    result = run_job(load_spec(spec_path), run_id="r", progress=False)
    info = json.loads((result.run_dir / "run.json").read_text())
    print(json.dumps({"status": result.status, "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "timeline": info.get("timeline", {}), "total_s": info["timings"]["total"]}),
          flush=True)


def run_one(spec: Path) -> dict:
    load0 = os.getloadavg()
    out = subprocess.run([sys.executable, __file__, "--child", str(spec)], check=True,
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    got = json.loads(out.stdout.strip().splitlines()[-1])
    got.update(load=(load0[0], os.getloadavg()[0]))
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=12, help="images per dataset")
    ap.add_argument("--pixels", type=int, default=1000, help="pixels per image at 1×")
    ap.add_argument("--scale", type=int, default=10, help="the pool-bytes factor of the big run")
    ap.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child)
    size = (128, 256)
    if args.pixels * args.scale > size[0] * size[1]:
        ap.error(f"--pixels × --scale must be at most {size[0] * size[1]} (pixels per image)")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    root = Path(tempfile.mkdtemp(prefix="bench_rss_"))
    rows = {}
    try:
        for factor in (1, args.scale):
            t0 = time.perf_counter()
            r = run_one(write_job(root / f"x{factor}", args.images, args.pixels * factor, size))
            line = r["timeline"]
            rows[factor] = r
            print(f"{factor:>3}×: {r['status']}, {time.perf_counter() - t0:.1f} s, driver peak RSS "
                  f"{r['peak_rss_kib'] / 1024:.1f} MiB, pool bytes {line['pool_bytes'] / 2**20:.2f} MiB, "
                  f"bytes through the driver {line['driver_bytes'] / 1024:.1f} KiB "
                  f"({100 * line['driver_bytes'] / line['pool_bytes']:.3f}% of the pool bytes); "
                  f"load {r['load'][0]:.1f} → {r['load'][1]:.1f}")
        a, b = rows[1], rows[args.scale]
        print(f"pool bytes ×{b['timeline']['pool_bytes'] / a['timeline']['pool_bytes']:.1f}: "
              f"driver peak RSS grew {(b['peak_rss_kib'] - a['peak_rss_kib']) / 1024:+.1f} MiB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
