"""Job specs: the YAML a user writes, checked in full before any work starts.

A job spec names the output and store roots, the metric settings, the datasets (format +
root + reader options), the models (architecture, checkpoint, source dataset, layer,
input normalisation), the targets, an optional ground-truth CSV and the Ray resources.
:func:`validate` walks the raw mapping and returns **every** problem with its path in the
spec (``models.tiny_bdd.checkpoint: file not found: /abs/ckpt/tiny_bdd.pt``);
:func:`load_spec` reads a file, validates it and returns a :class:`JobSpec` with every
path resolved (relative paths resolve against the spec's folder) and every default filled.

Nothing in a spec is evaluated: YAML is read with ``safe_load`` semantics, and a model
factory ``package.module:function`` is only checked for its shape here (it is imported, never
eval'd, when the model is loaded).
"""


from __future__ import annotations

import difflib
import logging
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import yaml

from segotce_ray.metrics import registry
from segotce_ray.metrics.correlation import ground_truth_problems
from segotce_ray.spec.model import (COST_SCALES, DATASET_FORMATS, SAMPLINGS, SCHEDULES,
                                     SCHEDULES_AVAILABLE, SOLVERS, TORCHVISION_ARCHITECTURES,
                                     OTCESettings, SpecProblem, known_metrics, needs_source,
                                     otce_settings)

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


# ---------------------------------------------------------------------------- YAML loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that records duplicate mapping keys instead of silently keeping the last."""

    duplicates: list[tuple[str, int]]


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                loader.duplicates.append((str(key), key_node.start_mark.line + 1))
            seen.add(key)
        except TypeError:  # unhashable key: let the base constructor raise its error
            pass
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | Path) -> tuple[Any, list[SpecProblem]]:
    """Parse a YAML file safely; returns (data, problems) — duplicate keys are problems."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return None, [SpecProblem("", f"cannot read job spec {path}: {exc.strerror or exc}")]
    loader = _UniqueKeyLoader(text)
    loader.duplicates = []
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        return None, [SpecProblem("", f"{path}: not valid YAML: {exc}")]
    finally:
        loader.dispose()
    problems = [SpecProblem("", f"duplicate key {k!r} at line {line} (the later value would win)")
                for k, line in loader.duplicates]
    return data, problems


# ---------------------------------------------------------------------------- validation


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "mapping"}.get(type(v), type(v).__name__)


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


class SpecChecker:
    """Collects problems while walking the raw spec."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.problems: list[SpecProblem] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(SpecProblem(path, message))

    # -- shapes
    def keys(self, path: str, raw: dict, allowed: tuple[str, ...] | list[str],
             required: tuple[str, ...] = ()) -> None:
        for key in raw:
            if not isinstance(key, str):
                self.add(_join(path, key), f"keys must be strings, got {_type_name(key)} {key!r}")
                continue
            if key not in allowed:
                hint = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
                msg = f"unknown key {key!r}"
                msg += f" (did you mean {hint[0]!r}?)" if hint else f" (allowed: {', '.join(allowed)})"
                self.add(_join(path, key), msg)
        for key in required:
            if key not in raw:
                self.add(_join(path, key), "required key is missing")

    def mapping(self, path: str, v: Any) -> bool:
        if isinstance(v, dict):
            return True
        self.add(path, f"expected a mapping, got {_type_name(v)} {_show(v)}")
        return False

    def string(self, path: str, v: Any, choices: tuple[str, ...] | None = None) -> bool:
        if not isinstance(v, str) or not v:
            self.add(path, f"expected a non-empty string, got {_type_name(v)} {_show(v)}")
            return False
        if choices is not None and v not in choices:
            hint = difflib.get_close_matches(v, list(choices), n=1, cutoff=0.6)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            self.add(path, f"must be one of {', '.join(choices)}; got {v!r}{extra}")
            return False
        return True

    def integer(self, path: str, v: Any, lo: int | None = None, hi: int | None = None) -> bool:
        if isinstance(v, bool) or not isinstance(v, int):
            self.add(path, f"expected an integer, got {_type_name(v)} {_show(v)}")
            return False
        if lo is not None and v < lo:
            self.add(path, f"must be >= {lo}, got {v}")
            return False
        if hi is not None and v > hi:
            self.add(path, f"must be <= {hi}, got {v}")
            return False
        return True

    def number(self, path: str, v: Any, lo: float | None = None, *, strict: bool = False,
               hi: float | None = None) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.add(path, f"expected a number, got {_type_name(v)} {_show(v)}")
            return False
        if v != v or v in (float("inf"), float("-inf")):
            self.add(path, f"must be a finite number, got {v}")
            return False
        if lo is not None and (v <= lo if strict else v < lo):
            self.add(path, f"must be {'>' if strict else '>='} {lo}, got {v}")
            return False
        if hi is not None and v > hi:
            self.add(path, f"must be <= {hi}, got {v}")
            return False
        return True

    def name(self, path: str, v: Any, what: str) -> bool:
        if not isinstance(v, str) or not _NAME_RE.match(v):
            self.add(path, f"{what} name {v!r} must match {_NAME_RE.pattern} "
                           "(letters, digits, '_', '.', '-'; it names files and directories)")
            return False
        return True

    def string_list(self, path: str, v: Any, *, allow_scalar: bool = False) -> list[str] | None:
        if allow_scalar and isinstance(v, str):
            return [v]
        if not isinstance(v, list):
            self.add(path, f"expected a list of strings, got {_type_name(v)} {_show(v)}")
            return None
        ok = True
        for i, item in enumerate(v):
            if not isinstance(item, str) or not item:
                self.add(f"{path}[{i}]", f"expected a non-empty string, got {_type_name(item)} {_show(item)}")
                ok = False
        return list(v) if ok else None

    def triple(self, path: str, v: Any, positive: bool) -> bool:
        if not isinstance(v, list) or len(v) != 3:
            self.add(path, f"expected a list of 3 numbers (one per RGB channel), got {_show(v)}")
            return False
        ok = True
        for i, x in enumerate(v):
            ok &= self.number(f"{path}[{i}]", x, 0.0 if positive else None, strict=positive)
        return ok

    # -- paths
    def resolve(self, v: str) -> Path:
        p = Path(v).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def input_path(self, path: str, v: Any, kind: str) -> str | None:
        """A path the job reads (kind 'file' or 'dir'); must exist. Returns it absolute."""
        if not self.string(path, v):
            return None
        if _URL_RE.match(v):
            self.add(path, f"{v!r}: URLs are not readable here; mount the storage and give a path")
            return None
        p = self.resolve(v)
        if kind == "dir" and not p.is_dir():
            self.add(path, f"{'not a directory' if p.exists() else 'directory not found'}: {p}")
        elif kind == "file" and not p.is_file():
            self.add(path, f"{'not a file' if p.exists() else 'file not found'}: {p}")
        return str(Path(p).absolute())

    def output_root(self, path: str, v: Any) -> str | None:
        """A root the job writes under: no ``..`` component, ever; relative to the spec."""
        if not self.string(path, v):
            return None
        if _URL_RE.match(v):
            self.add(path, f"{v!r}: URL roots are not supported; mount shared storage "
                           "(NFS/EFS/FSx/GCS-fuse) and give its path")
            return None
        parts = PurePosixPath(v.replace("\\", "/")).parts
        if ".." in parts:
            self.add(path, f"{v!r} escapes via '..'; give a path inside the spec's folder "
                           "or an absolute path without '..'")
            return None
        p = self.resolve(v)
        if p.exists() and not p.is_dir():
            self.add(path, f"exists and is not a directory: {p}")
        return str(p.absolute())


_TOP_KEYS = ("name", "output", "store", "seed", "otce", "metrics", "schedule", "extraction",
             "datasets", "models", "targets", "ground_truth", "calibration", "resources",
             "description")
_OTCE_KEYS = ("n_pixels", "repetitions", "epsilon", "solver", "layer", "sampling", "cost_scale",
              "calibration")
_EXTRACTION_KEYS = ("layer", "pixels_per_image", "batch_size", "max_images", "sampling", "bad_images")
_RESOURCE_KEYS = ("gpus_per_actor", "actors", "cpu_threads", "gpus_per_task", "autoscaling")
_SCHEDULE_KEYS = ("mode", "min_repetitions", "top_k", "alpha")
_DATASET_KEYS = ("format", "root", "split", "cities", "max_images", "subset", "resize",
                 "label_map", "ignore_index", "split_list", "label_suffix", "unpaired",
                 "fingerprint", "annotations", "label_kind", "images", "labels")
_MODEL_KEYS = ("architecture", "checkpoint", "num_classes", "source", "layer", "mean", "std",
               "input_size", "kwargs", "family")


def _check_layer(c: SpecChecker, path: str, v: Any) -> None:
    if c.string(path, v) and not re.match(r"^[A-Za-z0-9_.]+$", v):
        c.add(path, f"layer must be 'penultimate', 'logits', 'probs' or a module name like "
                    f"'backbone.layer4'; got {v!r}")


def _check_otce(c: SpecChecker, raw: Any) -> None:
    if not c.mapping("otce", raw):
        return
    c.keys("otce", raw, _OTCE_KEYS)
    if "n_pixels" in raw:
        c.integer("otce.n_pixels", raw["n_pixels"], lo=1)
    if "repetitions" in raw:
        c.integer("otce.repetitions", raw["repetitions"], lo=1)
    if "epsilon" in raw:
        c.number("otce.epsilon", raw["epsilon"], 0.0, strict=True)
    if "solver" in raw:
        c.string("otce.solver", raw["solver"], SOLVERS)
    if "sampling" in raw:
        c.string("otce.sampling", raw["sampling"], SAMPLINGS)
    if "cost_scale" in raw:
        c.string("otce.cost_scale", raw["cost_scale"], COST_SCALES)
    if "layer" in raw:
        _check_layer(c, "otce.layer", raw["layer"])


def _check_calibration(c: SpecChecker, raw: dict) -> None:
    """``otce.calibration``: a readable, well-formed calibration file fitted for this job's
    layer, cost scale, ε and solver (:mod:`segotce_ray.metrics.calibration`), with ``otce`` selected."""
    p = c.input_path("otce.calibration", raw["otce"]["calibration"], "file")
    if p is None or not Path(p).is_file():
        return

    from segotce_ray.metrics.calibration import CalibrationError, read_calibration, settings_mismatch

    try:
        cal = read_calibration(p)
    except CalibrationError as exc:
        c.add("otce.calibration", str(exc))
        return
    for line in settings_mismatch(cal.settings, otce_settings(raw)):
        c.add("otce.calibration", f"{p}: {line}")
    metrics = raw.get("metrics", list(known_metrics()))
    if "otce" not in ([metrics] if isinstance(metrics, str) else metrics or []):
        c.add("otce.calibration", "needs metric 'otce' selected (the calibrated score is "
                                  "computed from its W_D and W_T)")


def _dataset_keys(fmt: Any) -> tuple[str, ...]:
    """Keys the dataset reader accepts for ``fmt`` (all formats' keys when ``fmt`` is unknown)."""
    try:
        from segotce_ray.inputs.datasets import DATASET_SPEC_KEYS
    except ImportError:  # reader not importable: fall back to the contract's keys
        return _DATASET_KEYS
    if fmt in DATASET_SPEC_KEYS:
        return tuple(sorted(DATASET_SPEC_KEYS[fmt]))
    return tuple(sorted(set().union(*DATASET_SPEC_KEYS.values())))


def _check_dataset(c: SpecChecker, path: str, raw: Any) -> None:
    if not c.mapping(path, raw):
        return
    fmt = raw.get("format")
    if "format" in raw:
        c.string(f"{path}.format", fmt, DATASET_FORMATS)
    allowed = _dataset_keys(fmt)
    c.keys(path, raw, allowed, required=("format", "root"))
    if "root" in raw:
        c.input_path(f"{path}.root", raw["root"], "dir")
    for key in ("split", "annotations", "label_kind", "images", "labels", "label_suffix"):
        if key in raw and key in allowed:
            c.string(f"{path}.{key}", raw[key])
    if "cities" in raw and "cities" in allowed:
        c.string_list(f"{path}.cities", raw["cities"], allow_scalar=True)
    if "max_images" in raw and raw["max_images"] is not None:
        c.integer(f"{path}.max_images", raw["max_images"], lo=1)
    if "subset" in raw:
        c.string(f"{path}.subset", raw["subset"], ("spread", "first"))
    if "unpaired" in raw:
        c.string(f"{path}.unpaired", raw["unpaired"], ("error", "skip"))
    if "fingerprint" in raw:
        c.string(f"{path}.fingerprint", raw["fingerprint"], ("stat", "content"))
    if "ignore_index" in raw and "ignore_index" in allowed:
        ii = raw["ignore_index"]
        for i, x in enumerate(ii if isinstance(ii, list) else [ii]):
            c.integer(f"{path}.ignore_index" + (f"[{i}]" if isinstance(ii, list) else ""), x,
                      lo=0, hi=65535)
    if "split_list" in raw:
        c.input_path(f"{path}.split_list", raw["split_list"], "file")
    if "resize" in raw:
        _check_resize(c, f"{path}.resize", raw["resize"])
    if "label_map" in raw and "label_map" in allowed:
        lm = raw["label_map"]
        if isinstance(lm, list):
            c.string_list(f"{path}.label_map", lm)
            if not lm:
                c.add(f"{path}.label_map", "must name at least one class")
        elif c.mapping(f"{path}.label_map", lm):
            if not lm:
                c.add(f"{path}.label_map", "must map at least one label id to a class name")
            for k, v in lm.items():
                kp = f"{path}.label_map.{k}"
                if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                    c.add(kp, f"label ids must be non-negative integers, got {_type_name(k)} {k!r}")
                if not isinstance(v, str) or v == "":
                    c.add(kp, f"expected a class name, got {_type_name(v)} {_show(v)}")
    elif fmt == "folder":
        c.add(f"{path}.label_map", "the folder format needs a label_map (label id -> class name)")


def _check_resize(c: SpecChecker, path: str, v: Any) -> None:
    """resize: null/'none', an int (the short side) or [height, width]."""
    if v is None or v == "none":
        return
    if isinstance(v, int) and not isinstance(v, bool):
        c.integer(path, v, lo=1)
        return
    if isinstance(v, list):
        if len(v) != 2:
            c.add(path, f"expected [height, width], got {_show(v)}")
            return
        for i, x in enumerate(v):
            c.integer(f"{path}[{i}]", x, lo=1)
        return
    c.add(path, f"expected 'none', a short-side integer or [height, width], got "
                f"{_type_name(v)} {_show(v)}")


def _check_architecture(c: SpecChecker, path: str, v: Any) -> str | None:
    """Returns the architecture family: torchvision, torchscript or factory."""
    if not c.string(path, v):
        return None
    if v == "torchscript":
        return "torchscript"
    if v in TORCHVISION_ARCHITECTURES:
        return "torchvision"
    if v.startswith("torchvision/"):
        ctor = v.split("/", 1)[1]
        if ctor not in TORCHVISION_ARCHITECTURES:
            hint = difflib.get_close_matches(ctor, TORCHVISION_ARCHITECTURES, n=1, cutoff=0.6)
            extra = f" (did you mean 'torchvision/{hint[0]}'?)" if hint else \
                f" (known: {', '.join(TORCHVISION_ARCHITECTURES)})"
            c.add(path, f"unknown torchvision architecture {ctor!r}{extra}")
            return None
        return "torchvision"
    if _FACTORY_RE.match(v):
        return "factory"
    c.add(path, f"architecture must be 'torchvision/<constructor>' (or the bare constructor "
                f"name), 'torchscript' or a factory "
                f"'package.module:function'; got {v!r}")
    return None


def _check_model(c: SpecChecker, path: str, raw: Any, datasets: dict) -> None:
    if not c.mapping(path, raw):
        return
    c.keys(path, raw, _MODEL_KEYS, required=("architecture",))
    family = _check_architecture(c, f"{path}.architecture", raw["architecture"]) \
        if "architecture" in raw else None
    if "checkpoint" in raw and raw["checkpoint"] is not None:
        c.input_path(f"{path}.checkpoint", raw["checkpoint"], "file")
    elif family == "torchscript":
        c.add(f"{path}.checkpoint", "a torchscript model needs its .pt file as checkpoint")
    if "family" in raw:
        c.string(f"{path}.family", raw["family"])
    if "num_classes" in raw:
        c.integer(f"{path}.num_classes", raw["num_classes"], lo=1)
    elif family == "torchvision":
        c.add(f"{path}.num_classes", "torchvision architectures need num_classes")
    if "source" in raw and raw["source"] is not None:
        src = raw["source"]
        if c.string(f"{path}.source", src) and isinstance(datasets, dict) and src not in datasets:
            hint = difflib.get_close_matches(src, [str(k) for k in datasets], n=1, cutoff=0.6)
            extra = f" (did you mean {hint[0]!r}?)" if hint else \
                f" (declared: {', '.join(map(str, datasets)) or 'none'})"
            c.add(f"{path}.source", f"source dataset {src!r} is not declared under datasets{extra}")
    if "layer" in raw:
        _check_layer(c, f"{path}.layer", raw["layer"])
    if "mean" in raw:
        c.triple(f"{path}.mean", raw["mean"], positive=False)
    if "std" in raw:
        c.triple(f"{path}.std", raw["std"], positive=True)
    if "input_size" in raw:
        v = raw["input_size"]
        if isinstance(v, list):
            if len(v) != 2:
                c.add(f"{path}.input_size", f"expected an integer or [height, width], got {_show(v)}")
            else:
                for i, x in enumerate(v):
                    c.integer(f"{path}.input_size[{i}]", x, lo=1)
        else:
            c.integer(f"{path}.input_size", v, lo=1)
    if "kwargs" in raw and c.mapping(f"{path}.kwargs", raw["kwargs"]):
        for k in raw["kwargs"]:
            if not isinstance(k, str) or not k.isidentifier():
                c.add(f"{path}.kwargs.{k}", "keyword argument names must be identifiers")


def _check_ground_truth(c: SpecChecker, raw: Any, models: Any, datasets: dict) -> None:
    """``ground_truth``: a CSV whose every row is usable, read now, before any work. Errors
    (a missing column, a value that is not a number, a repeated pair without a ``seed``
    column) name the file and the line; rows naming models or targets the job does not have,
    and a single target (no leave-one-target-out), are warnings."""
    p = c.input_path("ground_truth", raw, "file")
    if p is None or not Path(p).is_file():
        return
    try:
        gt = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        c.add("ground_truth", f"cannot read {p}: {exc}")
        return
    missing = [k for k in ("model", "target", "value") if k not in gt.columns]
    if missing:
        c.add("ground_truth", f"{p}: CSV header must have columns model,target,value[,seed]; "
                              f"missing {', '.join(missing)} (header: {','.join(gt.columns)})")
        return
    for prob in ground_truth_problems(gt):
        where = f"{p}: line {prob.line}" if prob.line is not None else str(p)
        if prob.level == "error":
            c.add("ground_truth", f"{where}: {prob.message}")
        else:
            log.warning("ground_truth %s: %s", where, prob.message)
    known = {"model": set(models) if isinstance(models, dict) else set(),
             "target": set(datasets)}
    for col, names in known.items():
        for i, v in enumerate(gt[col]):
            if names and v not in names:
                log.warning("ground_truth %s: line %d: %s %r is not in the job (the row is "
                            "not used)", p, i + 2, col, v)
                break


def _check_recommendation(c: SpecChecker, raw: Any) -> None:
    """``calibration``: a file written by ``segotce-ray calibrate`` (adds ``recommended``)."""
    p = c.input_path("calibration", raw, "file")
    if p is None or not Path(p).is_file():
        return
    try:
        data = json.loads(Path(p).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        c.add("calibration", f"cannot read {p}: {exc}")
        return
    if not isinstance(data, dict) or not {"chosen", "fit", "loto"} <= set(data):
        c.add("calibration", f"{p} is not a file written by `segotce-ray calibrate` (it needs "
                             "'chosen', 'fit' and 'loto'); a legacy SEG-OTCE calibration goes "
                             "under otce.calibration")


def validate(raw: Any, base_dir: str | Path) -> list[SpecProblem]:
    """Every problem in a raw (parsed-YAML) job spec, each with its dotted path.

    ``base_dir`` is the spec's folder: relative paths resolve against it. Files and roots
    are checked for existence; nothing is opened beyond a ground-truth CSV's header.
    """
    c = SpecChecker(Path(base_dir).expanduser().absolute())
    if not isinstance(raw, dict):
        c.add("", f"a job spec is a YAML mapping, got {_type_name(raw)}")
        return c.problems
    c.keys("", raw, _TOP_KEYS, required=("name", "datasets", "models", "targets"))
    if "name" in raw:
        c.name("name", raw["name"], "job")
    if "description" in raw:
        c.string("description", raw["description"])
    c.output_root("output", raw.get("output", "runs"))
    c.output_root("store", raw.get("store", "store"))
    if "seed" in raw:
        c.integer("seed", raw["seed"], lo=0, hi=2**63 - 1)
    if "otce" in raw:
        _check_otce(c, raw["otce"])
        if isinstance(raw["otce"], dict) and raw["otce"].get("calibration") is not None:
            _check_calibration(c, raw)
    _check_metrics(c, raw)
    _check_schedule(c, raw)
    _check_extraction(c, raw)
    _check_resources(c, raw)
    datasets = _check_datasets(c, raw)
    models = _check_models(c, raw, datasets)
    _check_targets(c, raw, datasets)
    if raw.get("ground_truth") is not None:
        _check_ground_truth(c, raw["ground_truth"], models, datasets)
    if raw.get("calibration") is not None:
        _check_recommendation(c, raw["calibration"])
    _check_sources(c, raw, models)
    return c.problems


def _check_metrics(c: SpecChecker, raw: dict) -> None:
    """``metrics``: names the registry scores, once each."""
    if "metrics" in raw:
        metrics = c.string_list("metrics", raw["metrics"], allow_scalar=True)
        for i, m in enumerate(metrics or []):
            if m in registry.METRICS and registry.METRICS[m].runner == "derived":
                c.add(f"metrics[{i}]", f"{m} is not selected here: it is computed from other "
                                       "metrics' rows; set otce.calibration to a calibration "
                                       "file (it adds the metric) and select otce")
            elif m not in known_metrics():
                hint = difflib.get_close_matches(m, known_metrics(), n=1, cutoff=0.6)
                c.add(f"metrics[{i}]", f"unknown metric {m!r}" + (
                    f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(known_metrics())})"))
        if metrics is not None and not metrics:
            c.add("metrics", "select at least one metric")
        if metrics and len(set(metrics)) != len(metrics):
            c.add("metrics", "lists a metric twice")


def _check_schedule(c: SpecChecker, raw: dict) -> None:
    """``schedule``: a mode, or a mapping of the adaptive schedule's parameters."""
    if "schedule" in raw:
        s = raw["schedule"]
        mode, mode_path = None, "schedule"
        if isinstance(s, str):
            mode = s if c.string("schedule", s, SCHEDULES) else None
        elif c.mapping("schedule", s):
            c.keys("schedule", s, _SCHEDULE_KEYS)
            if "mode" in s:
                mode_path = "schedule.mode"
                mode = s["mode"] if c.string("schedule.mode", s["mode"], SCHEDULES) else None
            if "min_repetitions" in s:
                c.integer("schedule.min_repetitions", s["min_repetitions"], lo=1)
            if "top_k" in s:
                c.integer("schedule.top_k", s["top_k"], lo=1)
            if "min_repetitions" in s and isinstance(s["min_repetitions"], int) \
                    and not isinstance(s["min_repetitions"], bool):
                otce_raw = raw.get("otce") if isinstance(raw.get("otce"), dict) else {}
                reps = otce_raw.get("repetitions", OTCESettings.repetitions)
                if isinstance(reps, int) and not isinstance(reps, bool) and reps >= 1 \
                        and s["min_repetitions"] > reps:
                    c.add("schedule.min_repetitions",
                          f"must be <= otce.repetitions ({reps}), got {s['min_repetitions']}")
            if "alpha" in s and c.number("schedule.alpha", s["alpha"], 0.0, strict=True) \
                    and s["alpha"] >= 1:
                c.add("schedule.alpha", f"must be < 1 (a probability), got {s['alpha']}")
        if mode is not None and mode not in SCHEDULES_AVAILABLE:
            c.add(mode_path, f"schedule {mode!r} is not available in this version; use "
                             f"{' or '.join(map(repr, SCHEDULES_AVAILABLE))}")


def _check_extraction(c: SpecChecker, raw: dict) -> None:
    """``extraction``: pixels per image, batch size, sampling, bad images, layer."""
    if "extraction" in raw and c.mapping("extraction", raw["extraction"]):
        e = raw["extraction"]
        c.keys("extraction", e, _EXTRACTION_KEYS)
        for k in ("pixels_per_image", "batch_size", "max_images"):
            if k in e and not (k == "max_images" and e[k] is None):
                c.integer(f"extraction.{k}", e[k], lo=1)
        if "sampling" in e:
            c.string("extraction.sampling", e["sampling"], SAMPLINGS)
        if "bad_images" in e:
            c.string("extraction.bad_images", e["bad_images"], ("fail", "skip"))
        if "layer" in e:
            _check_layer(c, "extraction.layer", e["layer"])
            old = raw.get("otce", {}).get("layer") if isinstance(raw.get("otce"), dict) else None
            if old is not None and old != e["layer"]:
                c.add("otce.layer", f"deprecated and contradicts extraction.layer ({e['layer']!r}); "
                                    "remove otce.layer")


def _check_resources(c: SpecChecker, raw: dict) -> None:
    """``resources``: actors, GPUs per actor and task, CPU threads, autoscaling."""
    if "resources" in raw and c.mapping("resources", raw["resources"]):
        r = raw["resources"]
        c.keys("resources", r, _RESOURCE_KEYS)
        if r.get("gpus_per_actor") is not None and \
                c.number("resources.gpus_per_actor", r["gpus_per_actor"], 0.0) and \
                r["gpus_per_actor"] not in (0, 1):
            c.add("resources.gpus_per_actor", f"must be 0 (CPU) or 1 (one GPU per extraction "
                                              f"actor), got {r['gpus_per_actor']}")
        if r.get("actors") is not None:
            c.integer("resources.actors", r["actors"], lo=1)
        if r.get("cpu_threads") is not None:
            c.integer("resources.cpu_threads", r["cpu_threads"], lo=1)
        if r.get("gpus_per_task") is not None:
            c.number("resources.gpus_per_task", r["gpus_per_task"], 0.0, hi=1.0)
        if "autoscaling" in r and not isinstance(r["autoscaling"], bool) and \
                r["autoscaling"] not in ("auto", "on", "off"):
            c.add("resources.autoscaling", f"expected auto, on or off, got {r['autoscaling']!r}")


def _check_datasets(c: SpecChecker, raw: dict) -> dict:
    """``datasets``: each entry; returns the declared datasets (a mapping, maybe empty)."""
    datasets = raw.get("datasets")
    if "datasets" in raw and c.mapping("datasets", datasets):
        if not datasets:
            c.add("datasets", "declare at least one dataset")
        for name, ds in datasets.items():
            if c.name(f"datasets.{name}", name, "dataset"):
                _check_dataset(c, f"datasets.{name}", ds)
    if not isinstance(datasets, dict):
        datasets = {}
    return datasets


def _check_models(c: SpecChecker, raw: dict, datasets: dict) -> Any:
    """``models``: each entry against the declared datasets; returns the raw mapping."""
    models = raw.get("models")
    if "models" in raw and c.mapping("models", models):
        if not models:
            c.add("models", "declare at least one model")
        for name, m in models.items():
            if c.name(f"models.{name}", name, "model"):
                _check_model(c, f"models.{name}", m, datasets)
    return models


def _check_targets(c: SpecChecker, raw: dict, datasets: dict) -> None:
    """``targets``: declared datasets, each once."""
    if "targets" in raw:
        targets = c.string_list("targets", raw["targets"], allow_scalar=True)
        if targets is not None and not targets:
            c.add("targets", "name at least one target dataset")
        seen: set[str] = set()
        for i, t in enumerate(targets or []):
            if t in seen:
                c.add(f"targets[{i}]", f"target {t!r} is listed twice")
            seen.add(t)
            if t not in datasets:
                hint = difflib.get_close_matches(t, [str(k) for k in datasets], n=1, cutoff=0.6)
                c.add(f"targets[{i}]", f"target {t!r} is not a declared dataset" + (
                    f" (did you mean {hint[0]!r}?)" if hint else
                    f" (declared: {', '.join(map(str, datasets)) or 'none'})"))


def _check_sources(c: SpecChecker, raw: dict, models: Any) -> None:
    """A selection of metrics that all need the source pool needs every model's source."""
    # Cross-check: OTCE needs each model's source pool.
    metrics_sel = raw.get("metrics", list(known_metrics()))
    if isinstance(metrics_sel, str):
        metrics_sel = [metrics_sel]
    if isinstance(models, dict) and isinstance(metrics_sel, list) and \
            any(needs_source(m) for m in metrics_sel if isinstance(m, str)) and \
            all(needs_source(m) for m in metrics_sel if isinstance(m, str)):
        for name, m in models.items():
            if isinstance(m, dict) and m.get("source") is None and _NAME_RE.match(str(name)):
                c.add(f"models.{name}.source", "required: every selected metric "
                      f"({', '.join(map(str, metrics_sel))}) needs the model's source dataset")
