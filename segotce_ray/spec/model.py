"""The job spec as dataclasses: what a user's YAML becomes after validation.
"""


from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from segotce_ray.metrics import registry
from segotce_ray.scoring.settings import OTCESettings


DATASET_FORMATS = ("cityscapes", "bdd100k", "gta5", "folder")
SOLVERS = ("auto", "sinkhorn", "emd", "exact+polish")
SAMPLINGS = ("uniform", "class_balanced")
COST_SCALES = ("none", "mean", "max")
#: feature spaces that need no module name: the classifier's input, its output, its softmax
LAYER_SPACES = ("penultimate", "logits", "probs")
SCHEDULES = ("full", "adaptive")
#: Schedules this version runs (``adaptive``: issue 8's early pruning, :mod:`segotce_ray.scoring.adaptive`).
SCHEDULES_AVAILABLE = ("full", "adaptive")


def known_metrics() -> tuple[str, ...]:
    """Every metric a job may select: the registry's scored metrics, in registry order.

    It is also the selection of a spec without a ``metrics`` key: pools always keep the source
    head's probabilities and the features, so every metric can run; SEG-OTCE also needs the
    model's source pool and is marked unavailable, with the reason, for a model without one.
    """
    return registry.scored_names()


def needs_source(metric: str) -> bool:
    """Whether ``metric`` reads the model's source-dataset pool (the registry says)."""
    rec = registry.METRICS.get(metric)
    return bool(rec and rec.needs_source)
TORCHVISION_ARCHITECTURES = (
    "deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large",
    "fcn_resnet50", "fcn_resnet101", "lraspp_mobilenet_v3_large",
)


@dataclass(frozen=True)
class SpecProblem:
    """One problem in a spec: where (dotted path, e.g. ``models.m1.checkpoint``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(ValueError):
    """A spec that does not validate; ``.problems`` lists every problem found."""

    def __init__(self, problems: list[SpecProblem], source: str | Path | None = None) -> None:
        self.problems = list(problems)
        self.source = str(source) if source is not None else None
        head = f"job spec {self.source}" if self.source else "job spec"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{head}: {len(self.problems)} problem(s)\n{lines}")


# ---------------------------------------------------------------------------- dataclasses


@dataclass
class ExtractionSettings:
    """How pools are drawn: pixels kept per image (uniformly or class-balanced among the
    valid pixels), images per forward batch, a default image cap for every dataset, what
    a bad image file does to its pool (``fail`` it, or ``skip`` the image), and the default
    feature space of every model (``layer``: ``penultimate`` | ``logits`` | ``probs`` | a
    module name; ``probs`` reads the softmax column of the ``logits`` pool, no extra pass)."""

    layer: str = "penultimate"
    pixels_per_image: int = 1000
    batch_size: int = 8
    max_images: int | None = None
    sampling: str = "uniform"
    bad_images: str = "fail"


@dataclass
class Resources:
    """Ray resources. ``None`` = decided from the cluster.

    gpus_per_actor: 1 pins each extraction actor to a GPU, 0 runs on CPU (default: 1 when
    the cluster has GPUs); actors: extraction actors, shared by every model (default: the number of GPUs,
    or 1 on CPU); cpu_threads: torch threads per CPU actor; gpus_per_task: GPU share of one
    scoring task (default 0.25 on a GPU cluster, else 0); autoscaling: ``auto`` | ``on`` |
    ``off`` (YAML's true/false read as on/off): whether node types an autoscaler can add count
    as feasible (:mod:`segotce_ray.cluster.placement`).
    """

    gpus_per_actor: float | None = None
    actors: int | None = None
    cpu_threads: int | None = None
    gpus_per_task: float | None = None
    autoscaling: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.autoscaling, bool):
            self.autoscaling = "on" if self.autoscaling else "off"


@dataclass
class Schedule:
    """Repetition schedule: ``full`` (K for every pair) or ``adaptive`` (issue 8 pruning).

    adaptive: every (model, target) gets ``min_repetitions`` (k₀ ≤ K) repetitions; further ones
    go only to models whose confidence interval can still reach the target's ``top_k``; δ =
    ``alpha`` bounds the chance per target that a true top-k model is pruned (see
    :mod:`segotce_ray.scoring.adaptive`). Written as ``schedule: adaptive`` or as a mapping
    ``{mode: adaptive, min_repetitions: 2, top_k: 5, alpha: 0.05}``.
    """

    mode: str = "full"
    min_repetitions: int = 2
    top_k: int = 5
    alpha: float = 0.05


@dataclass
class DatasetEntry:
    """A declared dataset: its name plus the reader options handed to ``open_dataset``."""

    name: str
    format: str
    root: str
    options: dict[str, Any] = field(default_factory=dict)

    def reader_spec(self) -> dict[str, Any]:
        """The mapping ``datasets.open_dataset(name, spec)`` takes (root absolute)."""
        return {"format": self.format, "root": self.root, **self.options}


@dataclass
class ModelEntry:
    """A declared model (mirrors ``models.ModelSpec``; ``layer`` falls back to ``extraction.layer``)."""

    name: str
    architecture: str
    checkpoint: str | None = None
    num_classes: int | None = None
    source: str | None = None
    layer: str = "penultimate"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    input_size: tuple[int, int] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    family: str | None = None

    @property
    def constructor(self) -> str:
        """The architecture as ``models.ModelSpec`` spells it (``torchvision/`` prefix dropped)."""
        return self.architecture.removeprefix("torchvision/")

    def family_name(self) -> str:
        """The model's architecture family: ``family`` when the spec names one, else the
        constructor's own name (``lraspp_mobilenet_v3_large``, a factory's function name,
        ``torchscript``)."""
        return self.family or self.constructor.rpartition(":")[2].rpartition(".")[2]


@dataclass
class JobSpec:
    """A validated job: every path absolute, every default filled."""

    name: str
    output: str
    store: str
    seed: int
    otce: OTCESettings
    datasets: dict[str, DatasetEntry]
    models: dict[str, ModelEntry]
    targets: list[str]
    metrics: list[str] = field(default_factory=lambda: list(known_metrics()))
    ground_truth: str | None = None
    calibration: str | None = None
    resources: Resources = field(default_factory=Resources)
    extraction: ExtractionSettings = field(default_factory=ExtractionSettings)
    schedule: Schedule = field(default_factory=Schedule)
    base_dir: str = "."
    path: str | None = None

    @property
    def job_dir(self) -> Path:
        """``<output>/<name>``: where this job's run directories and ``latest`` live."""
        return Path(self.output) / self.name

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain YAML-able data (the run directory's ``spec.yaml``)."""
        out: dict[str, Any] = {
            "name": self.name, "output": self.output, "store": self.store, "seed": self.seed,
            "otce": asdict(self.otce), "metrics": list(self.metrics),
            "schedule": asdict(self.schedule), "extraction": asdict(self.extraction),
            "resources": asdict(self.resources),
            "datasets": {n: d.reader_spec() for n, d in self.datasets.items()},
            "models": {},
            "targets": list(self.targets),
        }
        for n, m in self.models.items():
            md = {k: v for k, v in asdict(m).items() if k != "name" and v is not None}
            if not md.get("kwargs"):
                md.pop("kwargs", None)
            for k in ("mean", "std", "input_size"):
                if k in md:
                    md[k] = list(md[k])
            out["models"][n] = md
        if self.ground_truth:
            out["ground_truth"] = self.ground_truth
        if self.calibration:
            out["calibration"] = self.calibration
        return out

    def content_hash(self) -> str:
        """sha256 of the resolved spec minus its output root: what determines the results."""
        d = self.to_dict()
        d.pop("output", None)
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    def metric_needs_source(self, metric: str) -> bool:
        return needs_source(metric)


def otce_settings(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a calibration is checked against (:data:`segotce_ray.metrics.calibration.CHECKED_SETTINGS`) of a spec mapping (raw YAML or a resolved ``spec.yaml``).

    ``layer`` is the one layer of every model (a model's ``layer``, else ``extraction.layer``,
    else the deprecated ``otce.layer``), or the sorted list when the models differ; unset keys
    take the spec defaults.
    """
    default = OTCESettings()
    otce = spec.get("otce") if isinstance(spec.get("otce"), Mapping) else {}
    extraction = spec.get("extraction") if isinstance(spec.get("extraction"), Mapping) else {}
    base_layer = extraction.get("layer", otce.get("layer", ExtractionSettings().layer))
    models = spec.get("models") if isinstance(spec.get("models"), Mapping) else {}
    layers = sorted({str(m.get("layer", base_layer)) if isinstance(m, Mapping) else str(base_layer)
                     for m in models.values()}) or [str(base_layer)]
    eps = otce.get("epsilon", default.epsilon)
    return {"layer": layers[0] if len(layers) == 1 else layers,
            "cost_scale": str(otce.get("cost_scale", getattr(default, "cost_scale", "none"))),
            "epsilon": float(eps) if isinstance(eps, (int, float)) else eps,
            "solver": str(otce.get("solver", default.solver))}
