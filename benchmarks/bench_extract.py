"""Extraction throughput: Ray pipeline vs a plain single-process torch loop, same run.

Both sides do the same work on the same images, model and batch size — read + resize the
image and label, draw pixels, forward pass, bilinear feature sampling at the pixels,
softmax probs, Arrow table, Parquet shards in a PoolStore — and the two pools are checked
to be equal. Reported:

- images/s of each side, end to end (model load and, for Ray, the driver-side probe and the
  actor start-up included), and the ratio Ray / plain (goal ≥ 0.9× with one CPU actor);
- the same after the first finished batch (start-up excluded), the start-up of each side, and
  the image count from which the end-to-end ratio reaches 0.9×. Ray's start-up is a fresh
  actor process importing torch and building the model; the plain loop runs in a process
  that already has both, so on small runs the end-to-end ratio is start-up bound;
- the driver's peak RSS growth while Ray extracts N, 2N, 4N... images (streaming: flat);
- on a machine with CUDA: images/s per GPU and the GPU busy fraction (nvidia-smi samples).

Usage::

    python benchmarks/bench_extract.py                       # defaults sized for a laptop CPU
    python benchmarks/bench_extract.py --images 200 --size 256 512 --arch deeplabv3_resnet50
    python benchmarks/bench_extract.py --threads 1      # same single torch thread on both sides
    python benchmarks/bench_extract.py --actor-only --size 512 1024 --arch deeplabv3_resnet50  # GPU box
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segotce_ray.inputs.datasets import open_dataset  # noqa: E402
from segotce_ray.extract.pipeline import ExtractionRequest, extract_pools, request_key  # noqa: E402
from segotce_ray.inputs.models import ModelSpec, load_model  # noqa: E402
from segotce_ray.pools.pool import PixelPool  # noqa: E402
from segotce_ray.cluster.runtime import init_ray  # noqa: E402
from segotce_ray.extract.sampling import sample_feature_maps, sample_pixels
from segotce_ray.seeds import stable_seed  # noqa: E402
from segotce_ray.pools.store import PoolStore  # noqa: E402

CLASSES = {i: f"class{i}" for i in range(8)}


def write_folder_dataset(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> dict:
    """n blocky label maps + class-coloured noisy images in the ``folder`` layout."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    h, w = size
    palette = rng.integers(0, 255, size=(256, 3))
    for i in range(n):
        blocks = rng.integers(0, len(CLASSES), size=(-(-h // 16), -(-w // 16)))
        blocks[rng.random(blocks.shape) < 0.1] = 255
        label = np.kron(blocks, np.ones((16, 16), dtype=np.int64))[:h, :w].astype(np.uint8)
        image = np.clip(palette[label] + rng.integers(-30, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"im_{i:05d}.png", compress_level=1)
        Image.fromarray(label).save(root / "labels" / f"im_{i:05d}.png")
    return {"format": "folder", "root": str(root), "label_map": CLASSES, "ignore_index": 255}


def plain_loop(spec: ModelSpec, ds, store: PoolStore, key: str, batch_size: int, k: int,
               seed: int = 0) -> dict[str, float]:
    """The reference: one process, one loop, the same steps as the Ray actor.

    Returns ``{"total_s", "steady_images_per_s"}`` (images after the first batch / time after it).
    """
    import torch

    t0 = time.perf_counter()
    t_first = None
    model = load_model(spec)
    feats, probs, labels, ids, rows, cols = [], [], [], [], [], []
    samples = ds.samples
    for start in range(0, len(samples), batch_size):
        batch = []
        for s in samples[start:start + batch_size]:
            image, label = ds.load(s)
            r, c, lab = sample_pixels(label, k, seed=stable_seed(seed, spec.name, ds.name, s.image_id),
                                      ignore_index=ds.ignore_index)
            batch.append((s.image_id, image, label.shape, r, c, lab))
        x = torch.from_numpy(np.stack([b[1] for b in batch])).permute(0, 3, 1, 2).float().div_(255)
        with torch.inference_mode():
            feat, logits = model.features(x)
            h, w = batch[0][2]
            rs, cs = [b[3] for b in batch], [b[4] for b in batch]
            f16 = sample_feature_maps(feat, rs, cs, h, w).half().numpy()
            p16 = torch.softmax(sample_feature_maps(logits, rs, cs, h, w), dim=2).half().numpy()
            for i, (image_id, _, _, r, c, lab) in enumerate(batch):
                feats.append(f16[i, :len(r)])
                probs.append(p16[i, :len(r)])
                labels.append(lab)
                ids += [image_id] * len(r)
                rows.append(r)
                cols.append(c)
        if t_first is None:
            t_first = time.perf_counter()
    pool = PixelPool(np.concatenate(feats), np.concatenate(labels), np.array(ids, dtype=object),
                     np.concatenate(rows), np.concatenate(cols), np.concatenate(probs),
                     meta={"model": spec.name, "dataset": ds.name})
    store.write(key, pool, {"reference": "plain loop"})
    t_end = time.perf_counter()
    n_after = len(samples) - min(batch_size, len(samples))
    return {"total_s": t_end - t0, "first_batch_s": t_first - t0,
            "after_first_images_per_s": n_after / (t_end - t_first) if n_after else float("nan")}


class RssSampler:
    """Peak resident set size of this process (VmRSS sampled every 20 ms), in MiB."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss_mib() -> float:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss_mib())
            time.sleep(0.02)

    def __enter__(self) -> "RssSampler":
        self.start = self.rss_mib()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss_mib())


class GpuBusy:
    """Mean GPU utilisation (nvidia-smi, every 0.2 s) while the block runs; None without one."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.split()[0]))
            except Exception:  # noqa: BLE001
                return
            time.sleep(0.2)

    def __enter__(self) -> "GpuBusy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def actor_only(args, tmp: Path, spec_d: dict) -> None:
    """No Ray: the read step and the actor callable in-process, on CUDA when present.

    Measures what one actor sustains when fed (images/s per GPU, GPU busy %), and checks the
    CUDA (autocast float16) pool rows against the CPU float32 ones for the first chunk.
    """
    import torch

    from segotce_ray.extract.actor import ChunkFeatureExtractor, load_chunk

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ds = open_dataset("bench", dict(spec_d, max_images=args.images, subset="first"))
    spec = ModelSpec(name="bench-model", architecture=args.arch, num_classes=len(CLASSES))
    jobs = {0: {"dataset": ds, "model": spec.name, "seed": 0, "pixels_per_image": args.pixels, "sampling": "uniform"}}
    n, bs = len(ds.samples), args.batch_size
    batches = [{"request": np.array([0]), "chunk": np.array([c]), "start": np.array([c * bs]),
                "stop": np.array([min(n, (c + 1) * bs)])} for c in range(-(-n // bs))]
    t = time.perf_counter()
    loaded = [load_chunk(b, jobs=jobs) for b in batches]
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    staging = tmp / "actor-only-shards"
    staging.mkdir(parents=True, exist_ok=True)
    req = {0: {"model": spec.name, "meta": {"model": spec.name}, "keep_probs": True, "staging": str(staging)}}
    ext = ChunkFeatureExtractor(req, {spec.name: (spec, "bench")}, device=dev)
    ext.model(spec.name)                                         # load now (timed as the model load)
    print(f"actor-only on {dev} ({torch.cuda.get_device_name() if dev == 'cuda' else os.cpu_count()}), "
          f"{args.arch}, {n} images {args.size[0]}x{args.size[1]}, batch {bs}: model load {time.perf_counter() - t:.1f}s, "
          f"read step {n / load_s:.1f} img/s on one core")
    ext(loaded[0])                                               # warm-up (cuDNN autotune, allocator)
    if dev == "cuda":
        torch.cuda.synchronize()
    with GpuBusy() as busy:
        t = time.perf_counter()
        outs = [ext(b) for b in loaded]
        if dev == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
    util = f", GPU busy {busy.mean:.0f}% (nvidia-smi mean)" if busy.mean is not None else ""
    print(f"  actor compute: {n / dt:.1f} img/s per {'GPU' if dev == 'cuda' else 'process'}{util}")
    if dev == "cuda":

        import pickle

        cpu = ChunkFeatureExtractor(req, {spec.name: (spec, "bench")}, device="cpu")
        items = pickle.loads(loaded[0]["payload"][0])
        a, _ = ext._chunk(req[0], items)
        b, _ = cpu._chunk(req[0], items)
        fa = a.column("feature").combine_chunks().flatten().to_numpy().astype(np.float32)
        fb = b.column("feature").combine_chunks().flatten().to_numpy().astype(np.float32)
        rel = np.linalg.norm(fa - fb) / max(np.linalg.norm(fb), 1e-12)
        same_px = a.column("row").equals(b.column("row")) and a.column("col").equals(b.column("col"))
        print(f"  CUDA autocast vs CPU fp32, first chunk: same pixels {same_px}, relative feature error {rel:.2e}, "
              f"max abs {np.abs(fa - fb).max():.3e} (feature scale {np.abs(fb).max():.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="lraspp_mobilenet_v3_large")
    ap.add_argument("--images", type=int, default=96, help="images for the throughput comparison")
    ap.add_argument("--size", type=int, nargs=2, default=[128, 256], metavar=("H", "W"))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--pixels", type=int, default=500, help="pixels per image")
    ap.add_argument("--rss-images", type=int, nargs="+", default=[48, 96, 192, 384],
                    help="image counts for the driver-memory series (tiny model)")
    ap.add_argument("--repeats", type=int, default=2, help="timed repetitions per side (best kept)")
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for the plain loop AND the Ray actor (default: Ray's CPUs)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--actor-only", action="store_true",
                    help="no Ray: time the actor callable in-process (CUDA if present) and check CUDA vs CPU")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")

    import torch

    tmp = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    try:
        t = time.perf_counter()
        n_max = args.images if args.actor_only else max([args.images, *args.rss_images])
        spec_d = write_folder_dataset(tmp / "data", n_max, tuple(args.size))
        print(f"wrote {n_max} images {args.size[0]}x{args.size[1]} in {time.perf_counter() - t:.1f}s")
        if args.actor_only:
            actor_only(args, tmp, spec_d)
            return
        init_ray(num_cpus=args.num_cpus)
        import ray

        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 0))
        cuda = torch.cuda.is_available() and gpus > 0
        threads = args.threads or max(1, cpus)
        torch.set_num_threads(threads)
        print(f"machine: {os.cpu_count()} cores, Ray CPUs={cpus} GPUs={gpus}, load average {os.getloadavg()[0]:.1f}, "
              f"model={args.arch}, batch={args.batch_size}, pixels/image={args.pixels}")

        # ---- throughput: Ray (1 actor) vs plain loop, same images/model/batch, at N/2 and N images
        ckpt = tmp / "model.pt"
        torch.save(load_model(ModelSpec(name="init", architecture=args.arch,
                                        num_classes=len(CLASSES))).module.state_dict(), ckpt)
        spec = ModelSpec(name="bench-model", architecture=args.arch, num_classes=len(CLASSES), checkpoint=ckpt)
        sizes = sorted({max(args.batch_size, args.images // 2), args.images})
        times: dict[int, dict[str, float]] = {}
        for count in sizes:
            ds = open_dataset(f"bench{count}", dict(spec_d, max_images=count, subset="first"))
            best = {"plain": float("inf"), "ray": float("inf"), "plain_after": 0.0, "ray_after": 0.0,
                    "plain_first": float("inf"), "ray_first": float("inf")}
            for rep in range(args.repeats):
                store_p, store_r = PoolStore(tmp / f"plain{count}_{rep}"), PoolStore(tmp / f"ray{count}_{rep}")
                req = ExtractionRequest(spec, ds, pixels_per_image=args.pixels, keep_probs=True)
                key = request_key(req, load_model(spec).weights_hash)
                t = time.perf_counter()
                plain = plain_loop(spec, ds, store_p, key, args.batch_size, args.pixels)
                plain_s = time.perf_counter() - t
                stats: dict = {}
                t = time.perf_counter()
                res = extract_pools([req], store_r, batch_size=args.batch_size, num_actors=1, progress=False,
                                    stats=stats, cpu_threads=threads)
                ray_s = time.perf_counter() - t
                got = res[(spec.name, ds.name)]
                if not isinstance(got, str):
                    raise SystemExit(f"ray extraction failed: {got}")
                st = stats[spec.name]
                a_, b_ = store_p.load(key), store_r.load(got)
                same = (np.array_equal(a_.labels, b_.labels) and np.array_equal(a_.rows, b_.rows)
                        and np.allclose(a_.features.astype(np.float32), b_.features.astype(np.float32),
                                        atol=1e-2, rtol=1e-2))
                print(f"  {count} images, rep {rep}: plain {plain_s:.1f}s ({count / plain_s:.2f} img/s) | Ray "
                      f"{ray_s:.1f}s ({count / ray_s:.2f} img/s; probe {st.get('probe_s', 0.0):.1f}s, first chunk out "
                      f"after {st.get('first_output_s', float('nan')):.1f}s) | pools equal: {same}")
                if not same:
                    raise SystemExit("the Ray pool differs from the plain loop's pool")
                best = {"plain": min(best["plain"], plain_s), "ray": min(best["ray"], ray_s),
                        "plain_after": max(best["plain_after"], plain["after_first_images_per_s"]),
                        "ray_after": max(best["ray_after"], st.get("after_first_images_per_s", 0.0)),
                        "plain_first": min(best["plain_first"], plain["first_batch_s"]),
                        "ray_first": min(best["ray_first"], st.get("probe_s", 0.0) + st.get("first_output_s", float("nan")))}
            times[count] = best
        device = "1 GPU actor" if cuda else "1 CPU actor"
        n = sizes[-1]
        pe, re_ = n / times[n]["plain"], n / times[n]["ray"]
        print(f"throughput, Ray with {device}, batch {args.batch_size}, {args.size[0]}x{args.size[1]} images, "
              f"{threads} torch thread(s) on both sides:")
        print(f"  end-to-end at {n} images: plain {pe:.2f} img/s, Ray {re_:.2f} img/s, "
              f"ratio {re_ / pe:.2f}x (goal >= 0.9x)")
        tn = times[n]
        print(f"  after the first batch (start-up excluded): plain {tn['plain_after']:.2f} img/s, Ray "
              f"{tn['ray_after']:.2f} img/s, ratio {tn['ray_after'] / tn['plain_after']:.2f}x")
        print(f"  start-up to the first finished batch: plain {tn['plain_first']:.1f}s (model load + batch), "
              f"Ray {tn['ray_first']:.1f}s (probe + actor process start + model load + batch); "
              f"0.9x end-to-end from ~{max(0.0, 0.9 * tn['ray_first'] - tn['plain_first']) / (1 / tn['plain_after'] - 0.9 / tn['ray_after']):.0f} images on"
              if tn['ray_after'] > 0.9 * tn['plain_after'] else
              f"  start-up: plain {tn['plain_first']:.1f}s, Ray {tn['ray_first']:.1f}s")
        ds = open_dataset(f"bench{n}", dict(spec_d, max_images=n, subset="first"))

        # ---- GPU: per-GPU rate and busy fraction with all GPUs
        if cuda:
            with GpuBusy() as busy:
                t = time.perf_counter()
                extract_pools([ExtractionRequest(spec, ds, pixels_per_image=args.pixels, seed=99)],
                              PoolStore(tmp / "gpu"), batch_size=args.batch_size, progress=False)
                dt = time.perf_counter() - t
            print(f"GPU: {n / dt / gpus:.2f} img/s per GPU over {gpus} GPU(s); "
                  f"GPU busy {busy.mean if busy.mean is not None else float('nan'):.0f}% (mean nvidia-smi util)")

        # ---- driver memory as the image count grows (streaming => flat)
        tiny = ModelSpec(name="rss-model", architecture="deeplabv3_mobilenet_v3_large", num_classes=len(CLASSES))
        print("driver peak RSS while extracting (MiB above the value at the start of each run):")
        for count in args.rss_images:
            dsn = open_dataset(f"rss{count}", dict(spec_d, max_images=count, subset="first"))
            with RssSampler() as rss:
                t = time.perf_counter()
                res = extract_pools([ExtractionRequest(tiny, dsn, pixels_per_image=args.pixels)],
                                    PoolStore(tmp / f"rss{count}"), batch_size=args.batch_size, progress=False)
                dt = time.perf_counter() - t
            if not isinstance(res[(tiny.name, dsn.name)], str):
                raise SystemExit(f"extraction failed: {res[(tiny.name, dsn.name)]}")
            store_n = PoolStore(tmp / f"rss{count}")
            man = store_n.manifest(res[(tiny.name, dsn.name)])
            meta = man["metadata"]
            raw_mib = man["rows"] * 2 * (int(meta["dim"]) + int(meta.get("num_probs", 0))) / 2**20
            print(f"  {count:6d} images: +{rss.peak - rss.start:7.1f} MiB peak (start {rss.start:.0f} MiB), "
                  f"pool {man['rows']} rows = {raw_mib:6.1f} MiB of float16 features+probs, {count / dt:.2f} img/s")
    finally:
        if not args.actor_only:
            import ray

            ray.shutdown()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
