"""Zoo extraction: one pipeline for the whole zoo vs one pipeline per model, same run.

A zoo of small convnets (``segotce_ray.demo.zoo:tiny_segnet``, each its own seeded random
init) × (one source + two targets) — every (model, dataset) pool extracted

- **zoo**: one :func:`extract_pools` call for every model (one Ray Data pipeline, one actor
  start-up; actors load models on first use);
- **per-model**: one :func:`extract_pools` call per model, in sequence (one pipeline and one
  actor start-up per model: the schedule before this change);

into two fresh stores, checks that both hold the same pools (same keys, same tables), and
prints the wall-time ratio and the marginal cost per model of the zoo path
((wall(n) − wall(1)) / (n − 1), its real forward work included), after a discarded warm-up
run (the first pipeline of a Ray session also starts its worker processes). ``--sequential-models m``
runs the per-model path on the first m models only and scales it linearly (printed as such).

``--cluster`` also runs the zoo path on a simulated three-node cluster
(``ray.cluster_utils.Cluster``: a head and two 1-CPU workers on this machine) with larger
pools and prints the bytes the driver received against the pool bytes the workers wrote.

Usage::

    python benchmarks/bench_zoo.py --models 50 --sequential-models 10
    python benchmarks/bench_zoo.py --models 6 --cluster
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_extract import CLASSES, write_folder_dataset  # noqa: E402
from segotce_ray.inputs.datasets import open_dataset  # noqa: E402
from segotce_ray.extract.pipeline import ExtractionRequest, extract_pools  # noqa: E402
from segotce_ray.inputs.models import ModelSpec  # noqa: E402
from segotce_ray.pools.store import PoolStore  # noqa: E402

DATASETS = ("source", "target1", "target2")


def make_datasets(root: Path, images: int, size: tuple[int, int]) -> dict:
    out = {}
    for i, name in enumerate(DATASETS):
        spec = write_folder_dataset(root / name, images, size, seed=i)
        out[name] = open_dataset(name, spec)
    return out


def zoo(n: int) -> list[ModelSpec]:
    return [ModelSpec(name=f"tiny{i:03d}", architecture="segotce_ray.demo.zoo:tiny_segnet",
                      num_classes=len(CLASSES), source="source") for i in range(n)]


def requests_of(models: list[ModelSpec], datasets: dict, pixels: int) -> list[ExtractionRequest]:
    return [ExtractionRequest(m, datasets[d], pixels_per_image=pixels) for m in models for d in DATASETS]


def timed_zoo(models, datasets, root: Path, args) -> tuple[float, dict, PoolStore]:
    store, stats = PoolStore(root), {}
    t = time.perf_counter()
    out = extract_pools(requests_of(models, datasets, args.pixels), store, batch_size=args.batch_size,
                        stats=stats)
    wall = time.perf_counter() - t
    bad = {k: v for k, v in out.items() if not isinstance(v, str)}
    if bad:
        raise SystemExit(f"extraction failed: {bad}")
    return wall, stats[models[0].name], store


def timed_per_model(models, datasets, root: Path, args) -> tuple[float, PoolStore]:
    store = PoolStore(root)
    t = time.perf_counter()
    for m in models:
        extract_pools(requests_of([m], datasets, args.pixels), store, batch_size=args.batch_size)
    return time.perf_counter() - t, store


def same_pools(a: PoolStore, b: PoolStore) -> bool:
    keys = b.keys()
    return set(keys) <= set(a.keys()) and all(a.read_table(k).equals(b.read_table(k)) for k in keys)


def local_run(args, tmp: Path) -> None:
    from segotce_ray.cluster.runtime import init_ray

    init_ray(num_cpus=args.cpus)
    datasets = make_datasets(tmp / "data", args.images, tuple(args.size))
    models = zoo(args.models)
    timed_zoo(models[:1], datasets, tmp / "store-warm", args)     # warm-up: worker start, imports
    one, _, _ = timed_zoo(models[:1], datasets, tmp / "store-one", args)
    wall, stats, zoo_store = timed_zoo(models, datasets, tmp / "store-zoo", args)
    m = args.sequential_models or args.models
    seq, seq_store = timed_per_model(models[:m], datasets, tmp / "store-seq", args)
    seq_full = seq * args.models / m
    marginal = (wall - one) / max(1, args.models - 1)
    print(f"zoo of {args.models} models x {len(DATASETS)} datasets ({args.images} images "
          f"{args.size[0]}x{args.size[1]} each, {args.pixels} px/image), {args.cpus} CPUs:")
    print(f"  zoo path (one pipeline):      {wall:7.1f} s  (1 model alone: {one:.1f} s; first chunk out "
          f"after {stats.get('first_output_s', float('nan')):.1f} s)")
    scaled = "" if m == args.models else f" (measured on {m} models: {seq:.1f} s, scaled x{args.models / m:.1f})"
    print(f"  per-model pipelines:          {seq_full:7.1f} s{scaled}")
    print(f"  ratio per-model / zoo:        {seq_full / wall:7.2f}x   (goal >= 3x)")
    print(f"  marginal cost per model:      {marginal:7.2f} s   (goal <= 1 s; its forward work included)")
    print(f"  per-model path per model:     {seq / m:7.2f} s")
    print(f"  same pools in both stores:    {same_pools(zoo_store, seq_store)}")
    print(f"  driver bytes / pool bytes:    {stats['driver_bytes']:.0f} / {stats['pool_bytes']:.0f} = "
          f"{stats['driver_bytes'] / stats['pool_bytes']:.2%}")


def cluster_run(args, tmp: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "num_gpus": 0, "object_store_memory": 150 * 1024**2}
    cluster = Cluster(initialize_head=True, head_node_args=dict(node))
    for _ in range(2):
        cluster.add_node(**node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})
    try:
        datasets = make_datasets(tmp / "cdata", args.cluster_images, tuple(args.cluster_size))
        models = zoo(args.models)
        args_c = argparse.Namespace(**{**vars(args), "pixels": args.cluster_pixels})
        wall, stats, store = timed_zoo(models, datasets, tmp / "store-cluster", args_c)
        print(f"simulated 3-node cluster ({len(ray.nodes())} nodes), {args.models} models x {len(DATASETS)} "
              f"datasets ({args.cluster_images} images {args.cluster_size[0]}x{args.cluster_size[1]}, "
              f"{args.cluster_pixels} px/image): {wall:.1f} s")
        print(f"  pool bytes written by workers: {stats['pool_bytes'] / 2**20:.2f} MiB in {len(store.keys())} pools")
        print(f"  bytes the driver received:     {stats['driver_bytes'] / 2**10:.1f} KiB = "
              f"{stats['driver_bytes'] / stats['pool_bytes']:.3%} of the pool bytes (goal <= 1%)")
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=int, default=50)
    p.add_argument("--sequential-models", type=int, default=0,
                   help="run the per-model path on this many models and scale (0 = all)")
    p.add_argument("--images", type=int, default=2, help="images per dataset")
    p.add_argument("--size", type=int, nargs=2, default=[64, 96])
    p.add_argument("--pixels", type=int, default=200, help="pixels per image")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--cluster", action="store_true", help="also run the simulated 3-node cluster part")
    p.add_argument("--cluster-only", action="store_true")
    p.add_argument("--cluster-images", type=int, default=16)
    p.add_argument("--cluster-size", type=int, nargs=2, default=[128, 192])
    p.add_argument("--cluster-pixels", type=int, default=2000)
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="bench_zoo_"))
    try:
        if not args.cluster_only:
            local_run(args, tmp)
        if args.cluster or args.cluster_only:
            import ray

            ray.shutdown()
            cluster_run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
