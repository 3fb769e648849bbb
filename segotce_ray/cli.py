"""``segotce-ray``: validate, run and report transferability jobs; run the demo.

::

    segotce-ray validate JOB [--deep]        # every problem in the spec and its inputs
    segotce-ray run JOB [--address auto] [--dry-run] [--store DIR] [--output DIR]
    segotce-ray report RUN_DIR               # re-render report.md (printed) and report.html
    segotce-ray calibrate RUN_DIR --ground-truth FILE [--out FILE]   # fit otce_calibrated
    segotce-ray demo [--workdir DIR]         # build the demo world + zoo, run it, print results

Exit status: 0 all done; 1 some pairs failed (the run still wrote everything that finished,
and a summary is printed); 2 the spec or the command line is invalid; 3 an unexpected error;
130 interrupted (Ctrl-C; finished work is kept and a rerun continues).
``run`` starts an embedded local Ray unless ``--address`` or ``RAY_ADDRESS`` names a cluster.
Progress bars (tqdm) show extraction and scoring when stderr is a terminal; otherwise plain
log lines.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from segotce_ray.metrics import registry

EXIT_OK, EXIT_FAILED_PAIRS, EXIT_INVALID, EXIT_ERROR = 0, 1, 2, 3

log = logging.getLogger("segotce_ray")


def _setup_logging(verbose: int, quiet: bool) -> None:
    """INFO lines when stderr is not a terminal (logs, cron, CI); bars + warnings on a tty."""
    if quiet:
        level = logging.WARNING
    elif verbose:
        level = logging.DEBUG if verbose > 1 else logging.INFO
    else:
        level = logging.WARNING if sys.stderr.isatty() else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)


def _load(path: str, store: str | None = None, output: str | None = None):
    """Load + validate a spec (with CLI root overrides); prints problems, returns spec or None."""
    from segotce_ray.spec.model import SpecError
    from segotce_ray.spec.build import build_spec
    from segotce_ray.spec.validate import read_yaml, validate

    p = Path(path)
    raw, problems = read_yaml(p)
    if raw is not None and isinstance(raw, dict):
        raw = dict(raw)
        if store:
            raw["store"] = str(Path(store).expanduser().absolute())
        if output:
            raw["output"] = str(Path(output).expanduser().absolute())
    if raw is not None:
        problems += validate(raw, p.parent)
    if problems:
        print(f"{p}: {len(problems)} problem(s):", file=sys.stderr)
        for prob in problems:
            print(f"  - {prob}", file=sys.stderr)
        return None
    try:
        return build_spec(raw, p.parent, p)
    except SpecError as exc:  # pragma: no cover - validate() already listed these
        print(str(exc), file=sys.stderr)
        return None


def cmd_validate(args: argparse.Namespace) -> int:
    spec = _load(args.job)
    if spec is None:
        return EXIT_INVALID
    facts: dict[str, int] = {}
    if not args.shallow:
        from segotce_ray.job.checks import validate_inputs

        problems = validate_inputs(spec, deep=args.deep, facts=facts)
        if problems:
            print(f"{args.job}: {len(problems)} problem(s) found opening the inputs:", file=sys.stderr)
            for prob in problems:
                print(f"  - {prob}", file=sys.stderr)
            return EXIT_INVALID
    n_pairs = len(spec.models) * len(spec.targets) * len(spec.metrics)
    print(f"{args.job}: ok — job {spec.name!r}: {len(spec.datasets)} dataset(s), "
          f"{len(spec.models)} model(s), {len(spec.targets)} target(s), metrics "
          f"{', '.join(spec.metrics)} → {n_pairs} pair(s) × K={spec.otce.repetitions}; "
          + _checked_line(args, facts))
    return EXIT_OK


def _checked_line(args: argparse.Namespace, facts: dict[str, int]) -> str:
    """What ``validate`` looked at: the spec only, headers and a sample of label ids, or all."""
    if args.shallow:
        return "spec only (--shallow: no file opened, no label id decoded)"
    files, decoded = facts.get("label_files", 0), facts.get("labels_decoded", 0)
    if args.deep:
        return f"every image and label decoded, label ids checked in all {files} label file(s)"
    return (f"file headers checked; label ids decoded in {decoded} of {files} label file(s) "
            f"(a sample; --deep checks them all)")


def cmd_run(args: argparse.Namespace) -> int:
    spec = _load(args.job, args.store, args.output)
    if spec is None:
        return EXIT_INVALID
    from segotce_ray.job.run import run_job

    progress = None if args.progress == "auto" else args.progress == "on"
    result = run_job(spec, address=args.address, dry_run=args.dry_run, run_id=args.run_id,
                     progress=progress, num_cpus=args.num_cpus)
    if args.dry_run:
        print(result.plan.render())
        return EXIT_OK
    print(result.summary())
    if result.table is not None:
        _print_top(result.table)
    if result.run_dir is not None:
        print(f"report: {result.run_dir / 'report.md'} and {result.run_dir / 'report.html'}")
    return result.exit_code


def _print_top(table, n: int = 3) -> None:
    """The first ``n`` models per target for the primary metric (SEG-OTCE when selected)."""
    from segotce_ray.results.report import metric_sort_key, rankings_from_long

    ranks = rankings_from_long(table)
    if ranks.empty:
        return
    primary = sorted(ranks["metric"].unique(), key=metric_sort_key)[0]
    print(f"top {n} per target ({primary}; rank 1 = most transferable):")
    for target, grp in ranks[ranks["metric"] == primary].groupby("target", sort=True):
        best = grp.sort_values("rank").head(n)
        print(f"  {target}: " + ", ".join(f"{int(r.rank)}. {r.model}" for r in best.itertuples()))


def _run_dir(path: str) -> Path:
    """A run directory from RUN_DIR as given: a job folder or a 'latest' link means its latest run."""
    from segotce_ray.job.status import latest_run     # light: job.run imports torch and Ray

    run_dir = Path(path)
    if run_dir.name != "latest" and (run_dir / "latest").exists():
        return latest_run(run_dir) or run_dir
    if run_dir.name == "latest":
        return latest_run(run_dir.parent) or run_dir
    return run_dir


def cmd_report(args: argparse.Namespace) -> int:
    from segotce_ray.results.publish import write_reports

    run_dir = _run_dir(args.run_dir)
    if not (run_dir / "matrix.parquet").is_file() and not (run_dir / "run.json").is_file():
        print(f"{run_dir}: not a run directory (no matrix.parquet / run.json)", file=sys.stderr)
        return EXIT_INVALID
    path, page = write_reports(run_dir, args.previous)
    if args.quiet:
        print(path)
    else:
        print(path.read_text(encoding="utf-8"))
    print(page)
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    import yaml

    from segotce_ray.io import write_json
    from segotce_ray.metrics.calibration import CalibrationError, calibrate, write_calibration
    from segotce_ray.metrics.recommend import recommend
    from segotce_ray.results.matrix import TransferabilityMatrix, read_ground_truth
    from segotce_ray.results.report import load_long
    from segotce_ray.spec.model import otce_settings

    run_dir = _run_dir(args.run_dir)
    if not (run_dir / "matrix.parquet").is_file() or not (run_dir / "spec.yaml").is_file():
        print(f"{run_dir}: not a finished run directory (needs matrix.parquet and spec.yaml)",
              file=sys.stderr)
        return EXIT_INVALID
    try:
        truth = read_ground_truth(args.ground_truth)
        long = load_long(run_dir)
        legacy = None
        if (long["metric"] == "otce").any():
            settings = otce_settings(yaml.safe_load((run_dir / "spec.yaml").read_text("utf-8")) or {})
            legacy = calibrate(long, truth, settings)
        pairs = TransferabilityMatrix(long).pair_frame()
        rec = recommend(pairs, truth, metrics=[c for c in pairs.columns if c in registry.METRICS])
    except (CalibrationError, ValueError) as exc:
        print(f"calibrate {run_dir}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    out = Path(args.out) if args.out else run_dir / "calibration.json"
    write_json(out, {"format": "segotce-ray recommendation", "version": 1,
                     "run": str(run_dir), "ground_truth": str(Path(args.ground_truth).absolute()),
                     **rec})
    _print_recommendation(rec)
    print(f"recommendation file: {out}")
    print(f"use it in a job with:  calibration: {out}   (adds the metric 'recommended')")
    if legacy is not None:
        otce_out = Path(args.otce_out) if args.otce_out else run_dir / "otce_calibration.json"
        write_calibration(otce_out, legacy)
        print()
        _print_calibration(legacy)
        print(f"SEG-OTCE calibration file: {otce_out}  (otce: {{calibration: FILE}} adds "
              f"'otce_calibrated')")
    return EXIT_OK


def _print_recommendation(rec: dict) -> None:
    """Every candidate's leave-one-target-out figures, the chosen one and its nested evidence."""
    def f(v) -> str:
        return "    –  " if v is None else f"{v:7.3f}"

    print("recommended ranking — leave-one-target-out over "
          f"{len(rec['targets'])} targets (rule: {rec['rule']}):")
    print(f"  {'candidate':<34} {'pearson':>7} {'w. tau':>7} {'regret':>7} {'utility':>7}")
    for name, v in sorted(rec["loto"].items(), key=lambda kv: (kv[0] == "recommended",
                                                                -(kv[1].get("utility") or -9))):
        label = f"{name} (nested)" if name == "recommended" else \
            (f"{name} ← chosen" if name == rec["chosen"] else name)
        print(f"  {label:<34} {f(v.get('pearson'))} {f(v.get('weighted_tau'))} "
              f"{f(v.get('regret'))} {f(v.get('utility'))}")
    reason = rec["loto"]["recommended"].get("reason")
    if reason:
        print(f"  nested evidence: {reason}")


def _print_calibration(cal) -> None:
    """LOTO figures of the raw and the calibrated SEG-OTCE, per target and their mean."""
    def f(v) -> str:
        return "   –   " if v is None else f"{v:7.3f}"

    raw, fit = cal.loto["raw"], cal.loto["calibrated"]
    print(f"form: {cal.form}   score = {cal.w_d:.6g}·x_D + {cal.w_t:.6g}·x_T + {cal.intercept:.6g}"
          f"   ({len(cal.pairs)} pairs; fitted for "
          + ", ".join(f"{k}={v}" for k, v in cal.settings.items()) + ")")
    print("leave-one-target-out (Pearson r, top-1 regret in ground-truth units):")
    print(f"  {'target':<24} {'raw r':>7} {'cal. r':>7} {'raw reg':>7} {'cal. reg':>8}")
    for t in sorted(raw["per_target"]):
        r, c = raw["per_target"][t], fit["per_target"].get(t, {})
        print(f"  {t:<24} {f(r['pearson'])} {f(c.get('pearson'))} {f(r['regret'])} "
              f"{f(c.get('regret'))}")
    print(f"  {'mean':<24} {f(raw['pearson'])} {f(fit['pearson'])} {f(raw['regret'])} "
          f"{f(fit['regret'])}")
    forms = ", ".join(f"{k} {f(v['pearson']).strip()}" for k, v in cal.loto["forms"].items())
    print(f"forms tried (LOTO mean r): {forms}")


def _print_demo_results(result) -> None:
    """Per-target rankings, the correlation table and where the files are."""
    import pandas as pd

    from segotce_ray.results.report import rankings_from_long, timeline_line

    ranks = rankings_from_long(result.table)
    for (metric, target), grp in ranks.groupby(["metric", "target"], sort=True):
        if metric != "otce":
            continue
        print(f"\nSEG-OTCE ranking for target {target!r} (1 = transfer this one first):")
        for r in grp.sort_values("rank").itertuples(index=False):
            print(f"  {int(r.rank):>2}. {r.model:<28} {r.mean:10.4f} ± {r.std:.4f}")
    corr = result.run_dir / "correlation.csv"
    if corr.is_file():
        table = pd.read_csv(corr)
        keep = [c for c in ("metric", "target", "n_models", "pearson", "spearman", "kendall_tau",
                            "weighted_tau", "regret", "best_in_top3") if c in table.columns]
        table = table[keep]
        mean = table[table["target"] == "__mean__"].drop(columns=["target", "n_models"],
                                                           errors="ignore")
        otce = table[(table["metric"] == "otce") & (table["target"] != "__mean__")]
        with pd.option_context("display.width", 160, "display.max_columns", 30,
                               "display.float_format", "{:.3f}".format):
            if not otce.empty:
                print("\nSEG-OTCE against the fine-tuning ground truth, per target "
                      "(1 = perfect; regret in ground-truth points):")
                print(otce.drop(columns="metric").to_string(index=False))
            if not mean.empty:
                print("\nEvery metric side by side, mean over targets (per-target rows: "
                      "correlation.csv):")
                print(mean.to_string(index=False))
    from segotce_ray.results.trust import headline_lines

    for line in headline_lines(result.run_dir)[1:]:   # "Read this first", as in the report
        print(line.replace("**", "").replace("## ", "").replace("`", ""))
    line = timeline_line(json.loads((result.run_dir / "run.json").read_text()).get("timeline") or {})
    if line:
        print(f"\n{line}")
    print(f"\nheatmap: {result.run_dir / 'heatmap.png'}")
    print(f"report:  {result.run_dir / 'report.md'}")
    print(f"page:    {result.run_dir / 'report.html'} (open it in a browser)")


def cmd_demo(args: argparse.Namespace) -> int:
    from segotce_ray.demo import build_demo
    from segotce_ray.job.run import run_job
    from segotce_ray.spec.build import load_spec

    workdir = Path(args.workdir).expanduser().absolute()
    print(f"building the demo world and model zoo under {workdir} (cached after the first run)")
    job_path = build_demo(workdir)
    spec = load_spec(job_path)
    progress = None if args.progress == "auto" else args.progress == "on"
    result = run_job(spec, address=args.address, progress=progress, num_cpus=args.num_cpus)
    _print_demo_results(result)
    if result.status != "ok":
        print("\n" + result.summary())
    return result.exit_code


def _ray_opts(q: argparse.ArgumentParser) -> None:
    """Options of the commands that run on Ray."""
    q.add_argument("--address", default=None,
                   help="Ray cluster to join ('auto', 'ray://host:10001', 'host:6379'); "
                        "default: RAY_ADDRESS, else an embedded local Ray")
    q.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs of the embedded local Ray (default: all)")
    q.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bars (auto: when stderr is a terminal)")


def _add_validate(sub: Any) -> None:
    p = sub.add_parser("validate", help="check a job spec and its inputs; list every problem",
                       description="Check a job spec: unknown keys, types, ranges, missing files "
                                   "and roots, undeclared targets/sources, output roots that "
                                   "escape via '..'; then open every dataset, load every "
                                   "checkpoint on CPU (weights_only, keys, class count) and "
                                   "verify every image and label header (--deep: decode them "
                                   "and check the label ids). Every problem is printed with its "
                                   "path in the spec; exit 2 if there is any.")
    p.add_argument("job", metavar="JOB", help="job spec (YAML)")
    p.add_argument("--shallow", action="store_true",
                   help="check the spec only; do not open the datasets or load the models")
    p.add_argument("--deep", action="store_true",
                   help="also decode every image and label file and check every label id "
                        "against the dataset's label map (reads all the data once)")
    p.set_defaults(func=cmd_validate)


def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="plan and run a job (only missing work is computed)",
                       description="Plan the job against the store, extract the missing pixel "
                                   "pools, score the missing (model, target) repetitions, and "
                                   "write runs/<name>/<run-id>/ (matrix, rankings, heatmap, "
                                   "report) and runs/<name>/latest. Safe to rerun after a kill.")
    p.add_argument("job", metavar="JOB", help="job spec (YAML)")
    _ray_opts(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print what is cached and what would be computed; run nothing")
    p.add_argument("--store", default=None, help="override the spec's store root")
    p.add_argument("--output", default=None, help="override the spec's output root")
    p.add_argument("--run-id", default=None, help="name of the run directory (default: UTC time)")
    p.set_defaults(func=cmd_run)


def _add_report(sub: Any) -> None:
    p = sub.add_parser("report", help="re-render a run's report.md (printed) and report.html",
                       description="Re-render RUN_DIR/report.md and RUN_DIR/report.html (one "
                                   "self-contained page) from the run's files (a job folder or "
                                   "a 'latest' link means its latest run); print report.md, "
                                   "then the page's path.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="runs/<name>/<run-id> (or runs/<name>)")
    p.add_argument("--previous", default=None,
                   help="run directory to compare with (default: the one recorded in run.json)")
    p.set_defaults(func=cmd_report)


def _add_calibrate(sub: Any) -> None:
    p = sub.add_parser("calibrate", help="learn a recommended ranking from a finished run and "
                                         "the team's ground truth",
                       description="Judge every metric of RUN_DIR alone, each with per-family "
                                   "offsets and log-capacity as covariates, the CVPR'21 form "
                                   "λ1·W_D + λ2·W_T + b and a rank average, leave-one-target-"
                                   "out against the ground truth; pick one by the README's rule "
                                   "(top-1 regret and weighted τ), with nested evidence; write "
                                   "the file that 'calibration: FILE' in a job applies (metric "
                                   "'recommended'). Also writes the SEG-OTCE-only calibration "
                                   "('otce: {calibration: FILE}', metric 'otce_calibrated').")
    p.add_argument("run_dir", metavar="RUN_DIR", help="runs/<name>/<run-id> (or runs/<name>)")
    p.add_argument("--ground-truth", required=True, metavar="FILE",
                   help="CSV with columns model,target,value[,seed] (as a job's ground_truth)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="recommendation file to write (default: RUN_DIR/calibration.json)")
    p.add_argument("--otce-out", default=None, metavar="FILE",
                   help="the SEG-OTCE-only calibration (λ1·W_D + λ2·W_T + b) to write "
                        "(default: RUN_DIR/otce_calibration.json)")
    p.set_defaults(func=cmd_calibrate)


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="build the demo world and zoo, rank it, compare with ground truth",
                       description="Generate a small multi-domain street-scene world and a zoo "
                                   "of segmentation models trained on it (cached in WORKDIR), "
                                   "run the demo job on Ray, and print the per-target rankings, "
                                   "the correlation with fine-tuning ground truth, and where the "
                                   "heatmap and report are.")
    p.add_argument("--workdir", default="segotce-demo",
                   help="where the demo world, zoo, store and runs live (default: ./segotce-demo)")
    _ray_opts(p)
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segotce-ray",
        description="Rank semantic-segmentation model zoos by SEG-OTCE transferability on Ray.",
        epilog="Exit status: 0 ok, 1 some pairs failed, 2 invalid spec/arguments, 3 error, "
               "130 interrupted.")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_validate, _add_run, _add_report, _add_calibrate, _add_demo):
        add(sub)
    return parser

def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    native = None
    if args.quiet:
        from segotce_ray.cluster.runtime import divert_native_stderr, set_quiet

        if argv is None:       # the process is this command: its fd 2 is ours to divert
            native = divert_native_stderr()
        set_quiet(True)
    _setup_logging(args.verbose, args.quiet)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    rc = EXIT_ERROR
    try:
        rc = int(args.func(args))
        return rc
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; rerun the same command to continue",
              file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for users, traceback with -v
        if args.verbose:
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if native is not None:
            _close_native(native, rc)


def _close_native(path: Path, rc: int) -> None:
    """``-q``: drop the diverted native stderr of a run that went well; name it otherwise."""
    try:
        if rc == EXIT_OK or path.stat().st_size == 0:
            path.unlink()
        else:
            print(f"(Ray's own messages of this command: {path})", file=sys.stderr)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
