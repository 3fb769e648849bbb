"""What ``segotce-ray validate`` checks beyond the spec: every checkpoint and every data file.

- **Models**: each model is built and its checkpoint loaded on CPU exactly as a run loads it
  (``torch.load(..., weights_only=True)``, a state dict whose keys and shapes fit the
  architecture and ``num_classes``, the layer tap installed). A text file, a truncated file,
  a pickle that is not a state dict or carries code, or a wrong class count is a problem
  named ``models.<name>``.
- **Data files** of every dataset the job reads (its targets and the models' sources): each
  image and label file is opened and its header verified (PIL ``verify``: a truncated PNG
  fails here), the label must be single-channel and the same size as its image.
  Without ``deep``, the labels of :data:`LABEL_SAMPLE_FILES` files per dataset (evenly
  spread over its sorted list) are decoded and their ids mapped through the dataset's label
  map (an id outside a folder dataset's ``label_map`` is a problem); the other label files'
  ids are not looked at, and ``validate`` says so. ``deep=True`` decodes every image and label
  and maps every label id, i.e. everything a run's extraction would read. Problems are named ``datasets.<name>`` and each
  names the file; at most :data:`MAX_FILE_PROBLEMS` are listed per dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from segotce_ray.spec.model import JobSpec, SpecProblem

__all__ = ["LABEL_SAMPLE_FILES", "MAX_FILE_PROBLEMS", "dataset_file_problems", "model_problems",
           "validate_inputs"]

#: Bad files listed per dataset (the rest are counted).
MAX_FILE_PROBLEMS = 20
#: Label files per dataset whose ids a plain ``validate`` decodes and checks (``--deep``: all).
LABEL_SAMPLE_FILES = 3
LABEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L", "LA", "PA")


def model_problems(model_specs: Mapping[str, Any]) -> dict[str, str]:
    """Load every model on CPU as a run would; ``{"models.<name>": reason}`` for each failure."""
    from segotce_ray.inputs.models import ModelError, load_model

    errors: dict[str, str] = {}
    for name, ms in model_specs.items():
        try:
            load_model(ms, "cpu").close()
        except ModelError as exc:
            errors[f"models.{name}"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - whatever breaks, it is this model's fault
            errors[f"models.{name}"] = str(ModelError(name, f"{type(exc).__name__}: {exc}"))
    return errors


def _verify_header(dataset: Any, path: Any, what: str) -> tuple[tuple[int, int], str]:
    """(size, mode) of an image file whose header and chunk structure verify."""
    from PIL import Image

    from segotce_ray.inputs.datasets import DatasetError

    try:
        with Image.open(path) as img:
            size, mode = img.size, img.mode
            img.verify()
    except FileNotFoundError as exc:
        raise DatasetError(f"{what} file not found", dataset.name, path) from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"cannot read {what} ({type(exc).__name__}: {exc})",
                           dataset.name, path) from exc
    return size, mode


def check_sample(dataset: Any, sample: Any, deep: bool = False, label_ids: bool = False) -> None:
    """Raise :class:`DatasetError` (naming the file) if ``sample`` would fail a run
    (``label_ids``: also decode the label and map its ids; ``deep``: decode everything)."""
    from segotce_ray.inputs.datasets import DatasetError

    image_size, _ = _verify_header(dataset, sample.image_path, "image")
    label_size, mode = _verify_header(dataset, sample.label_path, "label")
    if mode not in LABEL_MODES:
        raise DatasetError(f"label image must be single-channel (L, P or 16-bit), got mode {mode}",
                           dataset.name, sample.label_path)
    if label_size != image_size:
        raise DatasetError(f"label size {label_size[0]}x{label_size[1]} (WxH) does not match image "
                           f"{sample.image_path.name} size {image_size[0]}x{image_size[1]}",
                           dataset.name, sample.label_path)
    if deep:
        dataset.load(sample)       # full decode + label ids through the label map
    elif label_ids:
        dataset.load_label(sample)  # the label's ids through the label map


def _spread(n: int, k: int) -> set[int]:
    """``min(n, k)`` indices evenly spread over ``range(n)``."""
    return {(i * n) // k for i in range(k)} if n > k else set(range(n))


def dataset_file_problems(datasets: Mapping[str, Any], deep: bool = False,
                          facts: dict[str, int] | None = None) -> list[SpecProblem]:
    """Every bad image/label file of ``datasets`` (see the module docstring). ``facts`` gets
    ``label_files`` (files checked) and ``labels_decoded`` (those whose ids were checked)."""
    from segotce_ray.inputs.datasets import DatasetError

    problems: list[SpecProblem] = []
    facts = {} if facts is None else facts
    facts.setdefault("label_files", 0)
    facts.setdefault("labels_decoded", 0)
    for name, ds in datasets.items():
        bad = 0
        decode = _spread(len(ds.samples), LABEL_SAMPLE_FILES)
        facts["label_files"] += len(ds.samples)
        facts["labels_decoded"] += len(ds.samples) if deep else len(decode)
        for i, sample in enumerate(ds.samples):
            try:
                check_sample(ds, sample, deep, label_ids=i in decode)
            except DatasetError as exc:
                bad += 1
                if bad <= MAX_FILE_PROBLEMS:
                    problems.append(SpecProblem(f"datasets.{name}", str(exc)))
        if bad > MAX_FILE_PROBLEMS:
            problems.append(SpecProblem(f"datasets.{name}",
                                        f"... and {bad - MAX_FILE_PROBLEMS} more bad file(s)"))
    return problems


def validate_inputs(spec: JobSpec, deep: bool = False,
                    facts: dict[str, int] | None = None) -> list[SpecProblem]:
    """``validate``'s input pass: open the datasets, load every model, check every file
    (``facts``: see :func:`dataset_file_problems`)."""
    from segotce_ray.job.plan import check_inputs

    datasets, model_specs, errors = check_inputs(spec)
    errors.update(model_problems(model_specs))
    problems = [SpecProblem(path, msg) for path, msg in sorted(errors.items())]
    return problems + dataset_file_problems(datasets, deep, facts)
