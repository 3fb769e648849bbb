"""Running a job: plan → extract missing pools → score missing pairs → matrix → report.

**Plan.** From the spec and what is on disk, list every pixel pool the job needs (per
model: its source dataset and each target) with its content key (:func:`store.pool_key`),
cached or not, and every (model, target, metric) pair with how many of its K repetitions
are already finished. ``segotce-ray run --dry-run`` prints exactly this.

**Resumable.** Every finished scoring row is appended to a per-pair log the moment it
arrives (:class:`ScoreLog`, ``<store>/scores/<key[:2]>/<key>.jsonl``, flushed and fsynced),
keyed by everything that determines the pair's rows: the two pool keys, the metric and its
settings, the job seed and the names that seed the draws. Because repetition k is seeded
from (seed, model, target, k), a rerun after a kill computes only the missing repetitions
and the assembled table is the same as an uninterrupted run's. The log is content-addressed,
not run-addressed: tomorrow's run with two new models computes only their pools and pairs,
and any other job with the same inputs reuses the rows too.

**Run directory.** ``<output>/<name>/<run-id>/`` holds ``matrix.parquet``, ``scores.csv``,
``rankings.csv``, ``heatmap.png``, ``report.md``, ``correlation.csv`` (with ground truth),
``spec.yaml`` (resolved spec), ``plan.json`` and ``run.json`` (status, counts, errors,
versions, timings). ``<output>/<name>/latest`` points at the last finished run (a relative
symlink; a one-line text file where symlinks are not available).

**Schedule.** ``schedule: full`` spends K repetitions on every pair. ``schedule: adaptive``
(:mod:`segotce_ray.adaptive`) spends ``min_repetitions`` on every pair and the rest only on
models that can still enter a target's top-k; the others are *pruned* and keep the mean of
their partial repetitions. Both write each row to the same score log as it arrives, so an
adaptive run resumes like a full one and — decisions being a function of the seeded
repetitions only — comes to the same decisions and the same matrix. An adaptive run also
writes ``schedule.csv`` (one row per (metric, model, target): schedule_status complete /
pruned / failed, repetitions_done, mean, interval, threshold) and adds ``schedule_status``
and ``repetitions_done`` to ``summary.csv`` and ``rankings.csv``. The plan's "repetitions to
run" is then an upper bound.

One bad dataset or model never takes the job down: its pools and pairs are recorded as
failed with the reason, everything else completes, and the exit status is non-zero.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from segotce_ray.spec import SOURCE_METRICS, JobSpec, SpecProblem

#: the feature space read from a pool's ``probs`` column (``layer: probs``)
PROBS_SPACE = "probs"

log = logging.getLogger(__name__)

__all__ = [
    "JobResult", "PairPlan", "Plan", "PoolPlan", "ScoreLog", "check_inputs", "latest_run",
    "make_plan", "run_job", "versions",
]

SCORE_LOG_VERSION = 1
LATEST = "latest"


# ---------------------------------------------------------------------------- score log


def _jsonable(v: Any) -> Any:
    """Row values as plain JSON (numpy scalars → Python; pandas NA → None)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    try:
        import numpy as np

        if isinstance(v, np.bool_):
            return bool(v)
        if isinstance(v, np.integer):
            return int(v)
        if isinstance(v, np.floating):
            return float(v)
    except ImportError:  # pragma: no cover
        pass
    try:
        import pandas as pd

        if v is pd.NA:
            return None
    except ImportError:  # pragma: no cover
        pass
    return str(v)


class ScoreLog:
    """Append-only log of finished scoring rows, one JSON-lines file per pair key.

    Only ``status == "ok"`` rows are kept (a failed repetition is retried next run). Each
    line is written with one ``write`` of a complete line, flushed and fsynced; a torn last
    line (a kill mid-write) is skipped on read. Duplicate (metric, k) lines — two drivers on
    the same job — keep the first.
    """

    def __init__(self, store_root: str | Path) -> None:
        self.root = Path(store_root).expanduser() / "scores"

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.jsonl"

    def rows(self, key: str) -> list[dict[str, Any]]:
        path = self.path(key)
        if not path.is_file():
            return []
        out: dict[tuple[str, int], dict[str, Any]] = {}
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.endswith("\n"):
                    log.warning("score log %s: ignoring a torn last line %d", path, n)
                    break
                try:
                    row = json.loads(line)
                except ValueError:
                    log.warning("score log %s: ignoring unreadable line %d", path, n)
                    continue
                if row.get("status") != "ok":
                    continue
                out.setdefault((str(row["metric"]), int(row["k"])), row)
        return [out[k] for k in sorted(out)]

    def append(self, key: str, row: Mapping[str, Any]) -> None:
        if row.get("status") != "ok":
            return
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({k: _jsonable(v) for k, v in row.items()}, sort_keys=True) + "\n"
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


# ---------------------------------------------------------------------------- plan


@dataclass
class PoolPlan:
    """One pixel pool the job needs: (model, dataset), its store key, cached or not."""

    model: str
    dataset: str
    key: str | None
    cached: bool
    error: str | None = None


@dataclass
class PairPlan:
    """One (model, target, metric) pair: its score-log key and repetitions done / needed."""

    model: str
    source: str | None
    target: str
    metric: str
    key: str | None
    repetitions: int
    done: int = 0
    error: str | None = None
    not_applicable: bool = False     # by design (a source metric, no source): not a failure

    @property
    def todo(self) -> int:
        return 0 if self.error else max(0, self.repetitions - self.done)


@dataclass
class Plan:
    """What the job needs, what is cached and what will be computed."""

    spec: JobSpec
    pools: list[PoolPlan]
    pairs: list[PairPlan]
    errors: dict[str, str] = field(default_factory=dict)
    model_specs: dict[str, Any] = field(default_factory=dict, repr=False)
    datasets: dict[str, Any] = field(default_factory=dict, repr=False)

    def counts(self) -> dict[str, int]:
        return {
            "pools": len(self.pools),
            "pools_cached": sum(p.cached for p in self.pools),
            "pools_to_extract": sum(not p.cached and p.error is None for p in self.pools),
            "pools_unavailable": sum(p.error is not None for p in self.pools),
            "pairs": len(self.pairs),
            "pairs_complete": sum(p.error is None and p.todo == 0 for p in self.pairs),
            "pairs_to_score": sum(p.todo > 0 for p in self.pairs),
            "pairs_unavailable": sum(p.error is not None for p in self.pairs),
            "repetitions_cached": sum(p.done for p in self.pairs if p.error is None),
            "repetitions_to_run": sum(p.todo for p in self.pairs),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"job": self.spec.name, "counts": self.counts(), "errors": dict(self.errors),
                "pools": [asdict(p) for p in self.pools],
                "pairs": [{**asdict(p), "todo": p.todo} for p in self.pairs]}

    def render(self) -> str:
        """Human-readable plan (what ``--dry-run`` prints)."""
        c = self.counts()
        lines = [f"job {self.spec.name!r}: store {self.spec.store}",
                 f"pools: {c['pools']} needed, {c['pools_cached']} cached, "
                 f"{c['pools_to_extract']} to extract, {c['pools_unavailable']} unavailable",
                 f"pairs: {c['pairs']} (model × target × metric), {c['pairs_complete']} complete, "
                 f"{c['pairs_to_score']} to score ({c['repetitions_to_run']} repetitions; "
                 f"{c['repetitions_cached']} cached), {c['pairs_unavailable']} unavailable"]
        sched = self.spec.schedule
        if sched.mode == "adaptive":
            lines.append(f"schedule: adaptive (min_repetitions={sched.min_repetitions}, "
                         f"top_k={sched.top_k}, alpha={sched.alpha}): repetitions to run are an "
                         f"upper bound; models that cannot reach a target's top-{sched.top_k} "
                         f"stop early")
        if self.pools:
            lines.append("")
            lines.append("pools:")
            for p in self.pools:
                state = "unavailable" if p.error else "cached" if p.cached else "extract"
                key = (p.key or "-")[:12]
                lines.append(f"  {state:<11} {p.model} @ {p.dataset}  [{key}]"
                             + (f"  {p.error}" if p.error else ""))
        if self.pairs:
            lines.append("")
            lines.append("pairs:")
            for p in self.pairs:
                if p.error:
                    state = "unavailable"
                elif p.todo == 0:
                    state = "cached"
                else:
                    state = f"score {p.todo}/{p.repetitions}"
                lines.append(f"  {state:<11} {p.metric:<8} {p.model} → {p.target}"
                             + (f"  {p.error}" if p.error else ""))
        if self.errors:
            lines.append("")
            lines.append("problems (these items fail; everything else runs):")
            for what, msg in sorted(self.errors.items()):
                lines.append(f"  {what}: {msg}")
        return "\n".join(lines)


def _model_spec(entry) -> Any:
    """The job's model entry as a :class:`segotce_ray.models.ModelSpec`.

    ``layer: probs`` extracts the ``logits`` pool: every pool keeps the source head's softmax
    (``probs`` column), so the probs space is that column of the same pool (one pool serves
    ``logits`` and ``probs``; no extra forward pass).
    """
    from segotce_ray.models import LAYER_LOGITS, ModelSpec

    layer = LAYER_LOGITS if entry.layer == PROBS_SPACE else entry.layer
    kw: dict[str, Any] = {"name": entry.name, "architecture": entry.constructor,
                          "checkpoint": entry.checkpoint, "layer": layer,
                          "source": entry.source, "kwargs": dict(entry.kwargs)}
    for k in ("num_classes", "mean", "std", "input_size"):
        v = getattr(entry, k)
        if v is not None:
            kw[k] = v
    return ModelSpec(**kw)


def _weights_hash(spec: JobSpec, model_spec: Any, memoise: bool = True) -> str:
    """The checkpoint's content hash, memoised under the store by (path, size, mtime)."""
    from segotce_ray.models import model_weights_hash

    ckpt = model_spec.checkpoint
    if ckpt is None:
        return model_weights_hash(model_spec)
    st = Path(ckpt).stat()
    memo_key = hashlib.sha256(f"{Path(ckpt).absolute()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    memo = Path(spec.store) / "weights" / memo_key[:2] / memo_key
    try:
        return memo.read_text().strip()
    except OSError:
        pass
    digest = model_weights_hash(model_spec)
    if not memoise:
        return digest
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(digest)
    os.replace(tmp, memo)
    return digest


def check_inputs(spec: JobSpec) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Open every dataset and build every model spec: (datasets, model_specs, errors).

    ``errors`` maps ``"datasets.<name>"`` / ``"models.<name>"`` to the reason; the other
    items are returned and usable.
    """
    from segotce_ray.datasets import open_dataset
    from segotce_ray.models import ModelError

    datasets: dict[str, Any] = {}
    errors: dict[str, str] = {}
    needed = list(dict.fromkeys([*spec.targets, *(m.source for m in spec.models.values() if m.source)]))
    for name in needed:
        entry = spec.datasets[name]
        try:
            datasets[name] = open_dataset(name, entry.reader_spec(), Path(spec.base_dir))
        except Exception as exc:  # noqa: BLE001 - one bad dataset never stops the rest
            errors[f"datasets.{name}"] = str(exc)
    model_specs: dict[str, Any] = {}
    for name, entry in spec.models.items():
        try:
            model_specs[name] = _model_spec(entry)
        except (ModelError, ValueError, TypeError) as exc:
            errors[f"models.{name}"] = str(exc)
    return datasets, model_specs, errors


def input_problems(spec: JobSpec) -> list[SpecProblem]:
    """Problems found by opening the datasets and building the models (``validate``'s deep pass)."""
    _, _, errors = check_inputs(spec)
    return [SpecProblem(path, msg) for path, msg in sorted(errors.items())]


def extraction_request(spec: JobSpec, model_spec: Any, dataset: Any) -> Any:
    """The :class:`extract.ExtractionRequest` of one pool of this job.

    Source-head probabilities are always kept (``keep_probs``), so the same pool serves
    SEG-OTCE and the probability-based peers (NCE, LEEP) and its key does not depend on
    which metrics a job selects.
    """
    from segotce_ray.extract import ExtractionRequest

    mode = {"class_balanced": "balanced"}.get(spec.extraction.sampling, spec.extraction.sampling)
    return ExtractionRequest(model=model_spec, dataset=dataset,
                             pixels_per_image=spec.extraction.pixels_per_image,
                             sampling=mode, seed=spec.seed, keep_probs=True)


def _pair_key(spec: JobSpec, metric: str, params: Mapping[str, Any], model: str,
              source: str | None, target: str, source_key: str | None, target_key: str) -> str:
    payload = {"version": SCORE_LOG_VERSION, "metric": metric, "params": dict(params),
               "seed": spec.seed, "model": model, "source": source, "target": target,
               "source_pool": source_key, "target_pool": target_key}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _metric_params(spec: JobSpec, metric: str, model: str) -> dict[str, Any]:
    """The settings that determine a metric's rows (part of the pair key).

    The cost scale and the probs space enter only when they are not the historical default
    (``none``, the pool's feature column), so earlier scores stay valid.
    """
    params: dict[str, Any] = {"n_pixels": spec.otce.n_pixels}
    if metric == "otce":
        o = spec.otce
        params.update(epsilon=float(o.epsilon), solver=o.solver, sampling=o.sampling)
        if o.cost_scale != "none":
            params["cost_scale"] = o.cost_scale
    if spec.models[model].layer == PROBS_SPACE:
        params["space"] = PROBS_SPACE
    return params


def make_plan(spec: JobSpec, *, inputs: tuple | None = None, write: bool = True) -> Plan:
    """The job's plan against what is in the store now (opens datasets, hashes checkpoints).

    ``write=False`` (dry runs) leaves the store untouched: no folder is created and the
    checkpoint hashes are not memoised.
    """
    from segotce_ray import extract as extraction
    from segotce_ray.store import PoolStore

    datasets, model_specs, errors = inputs if inputs is not None else check_inputs(spec)
    store = PoolStore(spec.store) if write or (Path(spec.store) / "pools").is_dir() else None
    scores = ScoreLog(spec.store)
    fingerprints: dict[str, str] = {}
    for name, ds in datasets.items():
        try:
            fingerprints[name] = ds.fingerprint()
        except Exception as exc:  # noqa: BLE001
            errors[f"datasets.{name}"] = str(exc)
    hashes: dict[str, str] = {}
    for name, ms in model_specs.items():
        try:
            hashes[name] = _weights_hash(spec, ms, memoise=write)
        except Exception as exc:  # noqa: BLE001
            errors[f"models.{name}"] = str(exc)

    pools: dict[tuple[str, str], PoolPlan] = {}

    def pool(model: str, dataset: str) -> PoolPlan:
        if (model, dataset) in pools:
            return pools[(model, dataset)]
        err = errors.get(f"models.{model}") or errors.get(f"datasets.{dataset}")
        key = None
        if err is None:
            try:
                req = extraction_request(spec, model_specs[model], datasets[dataset])
                key = extraction.request_key(req, hashes[model], fingerprints[dataset])
            except Exception as exc:  # noqa: BLE001 - e.g. a bad sampling mode for this pool
                err = f"pool {model}@{dataset}: {exc}"
        cached = bool(key) and store is not None and store.has(key)  # type: ignore[arg-type]
        p = PoolPlan(model, dataset, key, cached=cached, error=err)
        pools[(model, dataset)] = p
        return p

    pairs: list[PairPlan] = []
    for mname in sorted(spec.models):
        m = spec.models[mname]
        for target in spec.targets:
            for metric in spec.metrics:
                needs_source = metric in SOURCE_METRICS
                tp = pool(mname, target)
                sp = pool(mname, m.source) if needs_source and m.source else None
                err, by_design = None, False
                if needs_source and not m.source:
                    err = f"{metric} unavailable: it needs the model's source dataset and " \
                          f"models.{mname}.source is not set"
                    by_design = True
                elif sp is not None and sp.error:
                    err = sp.error
                elif tp.error:
                    err = tp.error
                key = None
                done = 0
                if err is None:
                    key = _pair_key(spec, metric, _metric_params(spec, metric, mname), mname,
                                    m.source if needs_source else None, target,
                                    sp.key if sp else None, tp.key)  # type: ignore[arg-type]
                    done = sum(1 for r in scores.rows(key) if int(r["k"]) < spec.otce.repetitions)
                pairs.append(PairPlan(mname, m.source if needs_source else None, target, metric,
                                      key, spec.otce.repetitions, done, err, by_design))
    # only pools that some runnable pair still needs are extracted
    used = set()
    for p in pairs:
        if p.error is None:
            used.add((p.model, p.target))
            if p.source:
                used.add((p.model, p.source))
    plan_pools = [p for k, p in sorted(pools.items()) if k in used or p.error]
    return Plan(spec, plan_pools, pairs, errors, model_specs=model_specs, datasets=datasets)


# ---------------------------------------------------------------------------- run dirs


def versions() -> dict[str, str]:
    """Versions of everything that shapes the numbers (package, python, torch, ray, POT, ...)."""
    from importlib import metadata

    import segotce_ray

    out = {"segotce-ray": segotce_ray.__version__,
           "python": platform.python_version(), "platform": platform.platform()}
    for dist, key in (("torch", "torch"), ("torchvision", "torchvision"), ("ray", "ray"),
                      ("POT", "POT"), ("numpy", "numpy"), ("scipy", "scipy"),
                      ("pyarrow", "pyarrow"), ("pandas", "pandas")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = "not installed"
    return out


def latest_run(job_dir: str | Path) -> Path | None:
    """The run directory ``<job_dir>/latest`` points at (symlink or text file), if any."""
    job_dir = Path(job_dir)
    link = job_dir / LATEST
    if link.is_symlink():
        target = job_dir / os.readlink(link)
    elif link.is_file():
        name = link.read_text(encoding="utf-8").strip()
        if not name or "/" in name or name in (".", ".."):
            return None
        target = job_dir / name
    else:
        return None
    return target if target.is_dir() else None


def _set_latest(job_dir: Path, run_dir: Path) -> None:
    """Point ``latest`` at ``run_dir`` atomically (relative symlink; text-file fallback)."""
    link = job_dir / LATEST
    tmp = job_dir / f".{LATEST}.{os.getpid()}.tmp"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(run_dir.name, tmp)
        os.replace(tmp, link)
        return
    except (OSError, NotImplementedError) as exc:
        log.info("symlinks unavailable (%s); writing %s as a text file", exc, link)
    if tmp.is_symlink():
        tmp.unlink()
    tmp.write_text(run_dir.name + "\n", encoding="utf-8")
    if link.is_symlink():
        link.unlink()
    os.replace(tmp, link)


def _new_run_dir(job_dir: Path, run_id: str | None) -> Path:
    job_dir.mkdir(parents=True, exist_ok=True)
    base = run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    if "/" in base or base in (".", "..", LATEST) or base.startswith("."):
        raise ValueError(f"run id {base!r} must be a plain directory name")
    for n in range(1, 1000):
        name = base if n == 1 else f"{base}-{n}"
        try:
            (job_dir / name).mkdir()
            return job_dir / name
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run directory under {job_dir}")


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- run


@dataclass
class JobResult:
    """What a run produced: its directory, status, counts and failures."""

    run_dir: Path | None
    status: str                      # "ok" | "failed" | "planned"
    plan: Plan
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    table: Any = None                # the long results table (pandas)
    schedule: Any = None             # adaptive runs: the decisions (pandas, schedule.csv)

    @property
    def exit_code(self) -> int:
        return 0 if self.status in ("ok", "planned") else 1

    def summary(self) -> str:
        lines = [f"run {self.run_dir}: {self.status}"]
        if self.counts:
            lines.append(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.counts.items()))
        if self.counts.get("repetitions_full"):
            c = self.counts
            lines.append(f"adaptive schedule: {c['repetitions_spent']} of {c['repetitions_full']} "
                         f"repetitions ({c['pairs_pruned']} pair(s) pruned)")
        if self.failures:
            lines.append(f"{len(self.failures)} failure(s):")
            lines += [f"  - {f}" for f in self.failures[:50]]
            if len(self.failures) > 50:
                lines.append(f"  ... and {len(self.failures) - 50} more (see report.md)")
        return "\n".join(lines)


def _failure_lines(failed: Any, errors: Mapping[str, str]) -> list[str]:
    """One line per (pair, cause) with the metrics it hit, then errors no pair mentions."""
    from segotce_ray.report import failure_groups

    lines = [f"{', '.join(g['metrics'])} {g['model']} → {g['target']}: {g['rows']} "
             f"repetition(s) failed: {g['error']}" for g in failure_groups(failed)]
    for what, msg in sorted(errors.items()):
        if not any(msg in line for line in lines):
            lines.append(f"{what}: {msg}")
    return lines


def _skipped_images(spec: JobSpec, plan: Plan) -> dict[str, list[dict[str, str]]]:
    """``{"model@dataset": [{image_id, error}, ...]}``: images the job's pools left out
    (``extraction.bad_images: skip``), read from the pool manifests (cached pools included)."""
    from segotce_ray.store import PoolStore

    store = PoolStore(spec.store)
    out: dict[str, list[dict[str, str]]] = {}
    for p in plan.pools:
        if p.key is None or not store.has(p.key):
            continue
        try:
            skipped = store.manifest(p.key).get("skipped") or []
        except Exception:  # noqa: BLE001 - an unreadable manifest fails elsewhere, not here
            continue
        if skipped:
            out[f"{p.model}@{p.dataset}"] = [{"image_id": str(e.get("image_id")),
                                               "error": str(e.get("error", ""))} for e in skipped]
    return out


def _metric_specs(spec: JobSpec) -> dict[str, Any]:
    """Scoring :class:`MetricSpec` per selected metric."""
    from segotce_ray import scoring

    out: dict[str, Any] = {}
    for metric in spec.metrics:
        if metric == "otce":
            o = spec.otce
            out[metric] = scoring.otce_metric(scoring.OTCESettings(
                n_pixels=o.n_pixels, repetitions=o.repetitions, epsilon=float(o.epsilon),
                solver=o.solver, sampling=o.sampling,
                options={"cost_scale": o.cost_scale} if o.cost_scale != "none" else {}))
        else:
            out[metric] = scoring.peer_metric(metric, n_pixels=spec.otce.n_pixels,
                                              repetitions=spec.otce.repetitions)
    return out


def _unavailable_row(spec: JobSpec, p: PairPlan, k: int) -> dict[str, Any]:
    """A failed row for repetition k of a pair that cannot run (its reason in ``error``)."""
    from segotce_ray.scoring import repetition_seed

    return {"model": p.model, "target": p.target, "metric": p.metric, "k": k,
            "score": math.nan, "w_t": math.nan, "w_d": math.nan, "iterations": None,
            "converged": None, "n_source": None, "n_target": None, "seconds": math.nan,
            "status": "unavailable" if p.not_applicable else "failed", "error": p.error,
            "source": p.source,
            "seed": repetition_seed(spec.seed, p.model, p.target, k)}


def _execute(spec: JobSpec, plan: Plan, run_dir: Path, timings: dict[str, Any], *,
             address: str | None, num_cpus: int | None, progress: bool | None,
             on_row: Callable[[dict[str, Any]], None] | None) -> tuple[Any, dict[str, str], Any]:
    """Extract, score and write the matrix files.

    Returns (long table, extraction errors, decisions of an adaptive schedule or None).
    """
    from segotce_ray import extract as extraction
    from segotce_ray import scoring
    from segotce_ray.runtime import init_ray
    from segotce_ray.store import PoolStore

    t0 = time.perf_counter()
    init_ray(address=address, num_cpus=num_cpus)
    timings["ray_init"] = time.perf_counter() - t0
    store = PoolStore(spec.store)
    scores = ScoreLog(spec.store)
    errors: dict[str, str] = {}

    # -- extract the missing pools
    t0 = time.perf_counter()
    pool_results: dict[tuple[str, str], Any] = {}
    for p in plan.pools:
        if p.error:
            pool_results[(p.model, p.dataset)] = RuntimeError(p.error)
        elif p.cached:
            pool_results[(p.model, p.dataset)] = p.key
    missing = [p for p in plan.pools if not p.cached and p.error is None]
    probs_models = {m for m, e in spec.models.items() if e.layer == PROBS_SPACE}
    if missing:
        requests = [extraction_request(spec, plan.model_specs[p.model], plan.datasets[p.dataset])
                    for p in missing]
        gpus = spec.resources.gpus_per_actor
        got = extraction.extract_pools(
            requests, store, batch_size=spec.extraction.batch_size,
            num_actors=spec.resources.actors, use_gpu=None if gpus is None else gpus > 0,
            cpu_threads=spec.resources.cpu_threads, bad_images=spec.extraction.bad_images,
            progress=progress, n_draws=spec.otce.n_pixels,
            autoscaling=spec.resources.autoscaling)
        for (model, dataset), out in got.items():
            pool_results[(model, dataset)] = out
            if isinstance(out, BaseException):
                errors[f"pool {model}@{dataset}"] = str(out)
    for (model, dataset), src in list(pool_results.items()):  # layer: probs reads that column
        if model in probs_models and not isinstance(src, BaseException):
            pool_results[(model, dataset)] = scoring.ProbsView(src)
    timings["extract"] = time.perf_counter() - t0

    # -- score the missing repetitions (persist each row as it arrives)
    t0 = time.perf_counter()
    specs = _metric_specs(spec)
    key_of = {(p.model, p.target, p.metric): p.key for p in plan.pairs}

    def persist(row: dict[str, Any]) -> None:
        key = key_of.get((row["model"], row["target"], row["metric"]))
        if key is not None:
            scores.append(key, row)
        if on_row is not None:
            on_row(row)

    tables = []
    decisions = []
    adaptive = spec.schedule.mode == "adaptive"
    for metric, mspec in specs.items():
        runnable = [p for p in plan.pairs if p.metric == metric and p.error is None]
        if not runnable:
            continue
        done = [r for p in runnable for r in scores.rows(p.key) if int(r["k"]) < mspec.repetitions]
        # metrics without source data (the peers) never read the source pool
        pairs = [scoring.ScorePair(p.model, p.source or spec.models[p.model].source or "",
                                   p.target) for p in runnable]
        if adaptive:
            from segotce_ray.adaptive import AdaptiveSettings, score_pairs_adaptive

            sched = spec.schedule
            run = score_pairs_adaptive(
                pairs, pool_results, store=store, seed=spec.seed, metric=mspec, done=done,
                schedule=AdaptiveSettings(min_repetitions=sched.min_repetitions,
                                          top_k=sched.top_k, alpha=float(sched.alpha)),
                on_result=persist, progress=progress, num_gpus=spec.resources.gpus_per_task,
                autoscaling=spec.resources.autoscaling)
            tables.append(run.table)
            decisions.append(run.decisions.assign(repetitions_full=mspec.repetitions))
            continue
        tables.append(scoring.score_pairs(
            pairs, pool_results, store=store, seed=spec.seed, metrics=[mspec], done=done,
            on_result=persist, progress=progress, num_gpus=spec.resources.gpus_per_task,
            autoscaling=spec.resources.autoscaling))
    unavailable = [_unavailable_row(spec, p, k) for p in plan.pairs if p.error
                   for k in range(p.repetitions)]
    rows = [r for t in tables for r in t.to_dict("records")] + unavailable
    table = scoring.results_frame(rows)
    timings["score"] = time.perf_counter() - t0

    # -- matrix, correlation, report
    t0 = time.perf_counter()
    from segotce_ray import matrix as matrix_mod

    table = _calibrate(spec, table, run_dir, errors)
    table = mark_degenerate(table, pool_checks(store, pool_results), spec.otce.n_pixels)
    mat = matrix_mod.TransferabilityMatrix(table)
    mat.save(run_dir, ground_truth=spec.ground_truth)
    schedule = None
    if adaptive:
        schedule = _schedule_frame(decisions, plan)
        _write_schedule(run_dir, mat, schedule)
    timings["matrix"] = time.perf_counter() - t0

    return table, errors, schedule


def _calibrate(spec: JobSpec, table: Any, run_dir: Path, errors: dict[str, str]) -> Any:
    """The table plus the ``otce_calibrated`` rows when ``otce.calibration`` is set.

    The calibration file is copied to ``run_dir/calibration_applied.json`` (the report shows its
    LOTO figures). A file that no longer reads is an error of the job (``otce.calibration``),
    never of the raw results.
    """
    if not spec.otce.calibration or "otce" not in spec.metrics:
        return table
    from segotce_ray import calibration as cal_mod
    from segotce_ray.scoring import results_frame

    try:
        cal = cal_mod.read_calibration(spec.otce.calibration)
    except cal_mod.CalibrationError as exc:
        errors["otce.calibration"] = str(exc)
        return table
    data = {**cal.to_dict(), "path": spec.otce.calibration}
    _write_json(run_dir / "calibration_applied.json", data)
    extra = cal_mod.calibrated_rows(table, cal)
    return results_frame([*table.to_dict("records"), *extra.to_dict("records")])


def pool_checks(store: Any, pool_results: Mapping[tuple[str, str], Any]) -> dict[tuple[str, str], dict]:
    """:func:`segotce_ray.degeneracy.pool_stats` of every committed pool, memoised in the store.

    The memo is ``<store>/checks/<key[:2]>/<key>.json`` (a pool key fixes its content), so a
    pool is read for the check once, whatever the number of runs and repetitions. A pool that
    cannot be read is left out (its pairs fail on their own).
    """
    from segotce_ray.degeneracy import STATS_VERSION, pool_stats

    out: dict[tuple[str, str], dict] = {}
    for pool, key in pool_results.items():
        if not isinstance(key, str):
            continue
        memo = Path(store.root) / "checks" / key[:2] / f"{key}.json"
        try:
            stats = json.loads(memo.read_text(encoding="utf-8"))
            if stats.get("version") == STATS_VERSION:
                out[pool] = stats
                continue
        except (OSError, ValueError):
            pass
        try:
            table = store.read_table(key, columns=["label", "feature"]).combine_chunks()
            width = table.schema.field("feature").type.list_size
            feats = table.column("feature").combine_chunks().flatten() \
                .to_numpy(zero_copy_only=False).reshape(-1, width)
            stats = pool_stats(feats, table.column("label").to_numpy())
        except Exception as exc:  # noqa: BLE001 - a bad pool fails its pairs elsewhere
            log.warning("pool %s@%s: degeneracy check skipped: %s", *pool, exc)
            continue
        out[pool] = stats
        try:  # the memo only saves time: two runs writing it at once may both lose
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(stats), encoding="utf-8")
            os.replace(tmp, memo)
        except OSError as exc:
            log.info("pool %s@%s: check not memoised: %s", *pool, exc)
    return out


def mark_degenerate(table: Any, stats: Mapping[tuple[str, str], dict], n_pixels: int) -> Any:
    """``table`` with column ``degenerate``: per row, the reasons of the pools its metric reads.

    SEG-OTCE rows (and ``otce_calibrated``) read the model's source and target pools, the
    peers the target pool; the cell reads ``model@dataset: why`` (several joined by `` | ``;
    None when all are fine).
    """
    from segotce_ray.calibration import CALIBRATED_METRIC
    from segotce_ray.degeneracy import degenerate_reason

    reasons = {pool: degenerate_reason(s, n_pixels) for pool, s in stats.items()}

    def why(model: str, target: str, metric: str, source: Any) -> str | None:
        pools = [(model, target)]
        if metric in (*SOURCE_METRICS, CALIBRATED_METRIC) and isinstance(source, str) and source:
            pools.insert(0, (model, source))
        found = [f"{m}@{d}: {reasons[(m, d)]}" for m, d in pools if reasons.get((m, d))]
        return " | ".join(found) or None

    out = table.copy()
    out["degenerate"] = [why(str(r.model), str(r.target), str(r.metric), r.source)
                         for r in out[["model", "target", "metric", "source"]].itertuples()]
    return out


#: Columns of ``schedule.csv`` (an adaptive run's decisions, one row per pair).
SCHEDULE_FILE_COLUMNS = ["metric", "model", "target", "schedule_status", "repetitions_done",
                         "repetitions_full", "scheduled", "mean", "lower", "upper", "threshold",
                         "snapshot", "reason"]


def _schedule_frame(decisions: list[Any], plan: Plan) -> Any:
    """The adaptive decisions of every metric, plus the pairs that could not run.

    A pair that could not be scheduled (a pool failed: ``failed``; a source metric without a
    source: ``unavailable``) has 0 repetitions and ``scheduled`` False, so every (metric,
    model, target) of the plan has a row; repetition counts (spent vs full) cover the
    scheduled pairs only.
    """
    import pandas as pd

    frames = [d.assign(scheduled=True) for d in decisions if not d.empty]
    extra = [{"metric": p.metric, "model": p.model, "target": p.target,
              "schedule_status": "unavailable" if p.not_applicable else "failed",
              "repetitions_done": 0, "repetitions_full": p.repetitions, "scheduled": False,
              "reason": p.error}
             for p in plan.pairs if p.error is not None]
    if extra:
        frames.append(pd.DataFrame(extra))
    if not frames:
        return pd.DataFrame(columns=SCHEDULE_FILE_COLUMNS)
    out = pd.concat(frames, ignore_index=True).reindex(columns=SCHEDULE_FILE_COLUMNS)
    out["repetitions_done"] = out["repetitions_done"].astype("int64")
    out["repetitions_full"] = out["repetitions_full"].astype("int64")
    out["scheduled"] = out["scheduled"].astype(bool)
    out["snapshot"] = pd.array(pd.to_numeric(out["snapshot"], errors="coerce"), dtype="Int64")
    return out.sort_values(["metric", "model", "target"], kind="stable").reset_index(drop=True)


def _write_schedule(run_dir: Path, mat: Any, schedule: Any) -> None:
    """``schedule.csv``; ``schedule_status``/``repetitions_done`` joined onto ``summary.csv``
    and ``rankings.csv`` (``matrix.parquet`` keeps the plain long-table schema)."""
    keys = ["metric", "model", "target"]
    marks = schedule[[*keys, "schedule_status", "repetitions_done"]]

    def put(name: str, frame: Any) -> None:
        tmp = run_dir / f".{name}.tmp"
        frame.to_csv(tmp, index=False, float_format="%.10g")
        os.replace(tmp, run_dir / name)

    put("schedule.csv", schedule)
    put("summary.csv", mat.summary().merge(marks, on=keys, how="left"))
    put("rankings.csv", mat.rankings().merge(marks, on=keys, how="left"))


def run_job(spec: JobSpec, *, address: str | None = None, dry_run: bool = False,
            run_id: str | None = None, progress: bool | None = None,
            on_row: Callable[[dict[str, Any]], None] | None = None,
            num_cpus: int | None = None) -> JobResult:
    """Plan and (unless ``dry_run``) run a job; see the module docstring.

    on_row: called after each scoring row is persisted (tests use it to simulate a kill).
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    plan = make_plan(spec, write=not dry_run)
    timings["plan"] = time.perf_counter() - t0
    if dry_run:
        return JobResult(None, "planned", plan, plan.counts(), timings=timings)
    log.info("plan:\n%s", plan.render())

    job_dir = spec.job_dir
    from segotce_ray.run_status import Heartbeat, driver_identity, mark_abandoned

    mark_abandoned(job_dir)           # earlier runs left 'running' by a killed driver
    previous = latest_run(job_dir)
    run_dir = _new_run_dir(job_dir, run_id)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    info: dict[str, Any] = {
        "job": spec.name, "run_id": run_dir.name, "status": "running", "started": started,
        **driver_identity(),
        "spec_path": spec.path, "spec_hash": spec.content_hash(),
        "previous_run": previous.name if previous else None, "versions": versions(),
        "settings": {"seed": spec.seed, **{f"otce.{k}": v for k, v in asdict(spec.otce).items()},
                     "metrics": ",".join(spec.metrics),
                     "pixels_per_image": spec.extraction.pixels_per_image,
                     "schedule": spec.schedule.mode,
                     **({f"schedule.{k}": v for k, v in asdict(spec.schedule).items()
                         if k != "mode"} if spec.schedule.mode == "adaptive" else {})},
    }
    (run_dir / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False), encoding="utf-8")
    _write_json(run_dir / "plan.json", plan.to_dict())
    _write_json(run_dir / "run.json", info)

    try:
        with Heartbeat(run_dir / "run.json"):
            table, extraction_errors, schedule = _execute(
                spec, plan, run_dir, timings, address=address, num_cpus=num_cpus,
                progress=progress, on_row=on_row)
    except BaseException as exc:  # Ctrl-C or crash: say which, keep what finished
        info.update(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "error",
                    error=f"{type(exc).__name__}: {exc}",
                    timings={k: round(v, 3) for k, v in timings.items()})
        _write_json(run_dir / "run.json", info)
        raise
    errors = {**plan.errors, **extraction_errors}
    failed = table[table["status"] == "failed"]
    failures = _failure_lines(failed, errors)
    status = "failed" if len(failed) or errors else "ok"
    counts = plan.counts()
    counts.update(rows=len(table), rows_ok=int((table["status"] == "ok").sum()),
                  rows_failed=int(len(failed)),
                  rows_unavailable=int((table["status"] == "unavailable").sum()))
    if schedule is not None:
        ran = schedule[schedule["scheduled"]]
        counts.update(repetitions_spent=int(ran["repetitions_done"].sum()),
                      repetitions_full=int(ran["repetitions_full"].sum()),
                      pairs_pruned=int((ran["schedule_status"] == "pruned").sum()))
    timings["total"] = time.perf_counter() - t_start
    info.update(status=status, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                counts=counts, errors=errors, timings={k: round(v, 3) for k, v in timings.items()},
                skipped_images=_skipped_images(spec, plan))
    _write_json(run_dir / "run.json", info)
    _write_json(run_dir / "versions.json", info["versions"])
    _write_json(run_dir / "timings.json", info["timings"])

    from segotce_ray.report import write_report

    t0 = time.perf_counter()
    write_report(run_dir, previous)
    timings["report"] = time.perf_counter() - t0
    _set_latest(job_dir, run_dir)
    log.info("run %s: %s (%d rows, %d failed) in %.1f s", run_dir, status, len(table),
             len(failed), timings["total"])
    return JobResult(run_dir, status, plan, counts, failures, timings, table, schedule)
