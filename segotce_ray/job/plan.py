"""The plan: from a job spec and what is in the store, the pools and pairs still missing.
"""


from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


from segotce_ray.extract.pipeline import ExtractionRequest, PoolOrder, request_key
from segotce_ray.inputs.datasets import open_dataset
from segotce_ray.inputs.models import LAYER_LOGITS, ModelError, ModelSpec, model_weights_hash
from segotce_ray.io import write_text
from segotce_ray.metrics import registry
from segotce_ray.pools.score_log import ScoreLog
from segotce_ray.pools.store import PoolStore
from segotce_ray.spec.model import JobSpec, SpecProblem, needs_source

#: the feature space read from a pool's ``probs`` column (``layer: probs``)
PROBS_SPACE = "probs"

SCORE_LOG_VERSION = 1


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
    #: (model, dataset) → the :class:`PoolOrder` extraction takes as it is (request, key,
    #: weights hash, fingerprint): what the plan decided is what runs.
    orders: dict[tuple[str, str], PoolOrder] = field(default_factory=dict, repr=False)

    def orders_to_extract(self) -> list[PoolOrder]:
        """The orders of the pools that are neither cached nor unavailable, in plan order."""
        return [self.orders[(p.model, p.dataset)] for p in self.pools
                if not p.cached and p.error is None]

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
    """The job's model entry as a :class:`segotce_ray.inputs.models.ModelSpec`.

    ``layer: probs`` extracts the ``logits`` pool: every pool keeps the source head's softmax
    (``probs`` column), so the probs space is that column of the same pool (one pool serves
    ``logits`` and ``probs``; no extra forward pass).
    """

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
    write_text(memo, digest)
    return digest


def check_inputs(spec: JobSpec) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Open every dataset and build every model spec: (datasets, model_specs, errors).

    ``errors`` maps ``"datasets.<name>"`` / ``"models.<name>"`` to the reason; the other
    items are returned and usable.
    """

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

    mode = {"class_balanced": "balanced"}.get(spec.extraction.sampling, spec.extraction.sampling)
    return ExtractionRequest(model=model_spec, dataset=dataset,
                             pixels_per_image=spec.extraction.pixels_per_image,
                             sampling=mode, seed=spec.seed, keep_probs=True)


#: Version of the SEG-OTCE rows a pair key stands for (2: with the label joint).
OTCE_ROW_FORMAT = 2


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
    (``none``, the pool's feature column), so earlier scores stay valid. SEG-OTCE rows carry
    the label joint since row format 2 (the per-class view): rows logged before lack it, so
    ``row_format`` makes such pairs score once more (the same seeded repetitions).
    """
    params: dict[str, Any] = {"n_pixels": spec.otce.n_pixels}
    if registry.get(metric).runner == "otce":
        o = spec.otce
        params.update(epsilon=float(o.epsilon), solver=o.solver, sampling=o.sampling,
                      row_format=OTCE_ROW_FORMAT)
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
    orders: dict[tuple[str, str], PoolOrder] = {}

    def pool(model: str, dataset: str) -> PoolPlan:
        if (model, dataset) in pools:
            return pools[(model, dataset)]
        err = errors.get(f"models.{model}") or errors.get(f"datasets.{dataset}")
        key = None
        if err is None:
            try:
                req = extraction_request(spec, model_specs[model], datasets[dataset])
                key = request_key(req, hashes[model], fingerprints[dataset])
                orders[(model, dataset)] = PoolOrder(req, key, hashes[model], fingerprints[dataset])
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
                source_needed = needs_source(metric)
                tp = pool(mname, target)
                sp = pool(mname, m.source) if source_needed and m.source else None
                err, by_design = None, False
                if source_needed and not m.source:
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
                                    m.source if source_needed else None, target,
                                    sp.key if sp else None, tp.key)  # type: ignore[arg-type]
                    done = sum(1 for r in scores.rows(key) if int(r["k"]) < spec.otce.repetitions)
                pairs.append(PairPlan(mname, m.source if source_needed else None, target, metric,
                                      key, spec.otce.repetitions, done, err, by_design))
    # only pools that some runnable pair still needs are extracted
    used = set()
    for p in pairs:
        if p.error is None:
            used.add((p.model, p.target))
            if p.source:
                used.add((p.model, p.source))
    plan_pools = [p for k, p in sorted(pools.items()) if k in used or p.error]
    return Plan(spec, plan_pools, pairs, errors, model_specs=model_specs, datasets=datasets,
                orders=orders)
