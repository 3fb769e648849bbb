"""Run the demo's CPU-bound jobs (zoo training, ground-truth fine-tuning) in worker processes.

Each worker is a fresh Python process (running :func:`_main`) that reads its job
list as JSON on stdin, runs the jobs one after another with one torch thread and
deterministic algorithms, and writes the results as JSON on stdout. Fresh interpreters
(not ``fork``, not ``multiprocessing`` spawn) keep this safe from any caller: no inherited
thread pools, no re-import of the caller's ``__main__``. Results do not depend on the
number of workers: every job is seeded on its own.

This module imports none of the demo's modules: a caller passes its own job function
(``run_jobs(train_member_job, jobs)``) and a worker process finds it again by its
``module:function`` name, which must be one of :data:`JOB_FUNCTIONS`; nothing else is
imported or evaluated.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

#: the only functions a worker process runs, by ``module:function`` name
JOB_FUNCTIONS = frozenset({"segotce_ray.demo.zoo:train_member_job",
                           "segotce_ray.demo.ground_truth:pair_job",
                           "segotce_ray.demo.ground_truth:scratch_job"})


def job_name(fn: Callable[..., Any]) -> str:
    """``module:function`` of a job function; ``ValueError`` unless it is in :data:`JOB_FUNCTIONS`."""
    name = f"{fn.__module__}:{fn.__qualname__}"
    if name not in JOB_FUNCTIONS:
        raise ValueError(f"demo workers: {name!r} is not a job function")
    return name


def _resolve(name: str) -> Callable[..., Any]:
    if name not in JOB_FUNCTIONS:
        raise ValueError(f"demo workers: {name!r} is not a job function")
    module, func = name.split(":")
    return getattr(importlib.import_module(module), func)


def run_jobs(jobs: list[tuple[Callable[..., Any], dict]], workers: int = 2) -> list[Any]:
    """Run ``jobs`` — ``(job function, JSON-able kwargs)`` pairs, kinds may mix — and return
    their results in the order of ``jobs``.

    ``workers <= 1`` (or one job) runs in this process. Jobs are dealt round-robin to the
    workers, so put the slowest first. A failed worker raises ``RuntimeError`` with its
    stderr tail.
    """
    named = [(job_name(fn), kwargs) for fn, kwargs in jobs]
    if workers <= 1 or len(jobs) <= 1:
        return [fn(**kwargs) for fn, kwargs in jobs]
    n = min(workers, len(jobs))
    shards = [list(range(i, len(jobs), n)) for i in range(n)]
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    # not ``-m segotce_ray.demo.workers``: the package __init__ imports this module first
    entry = "import sys; from segotce_ray.demo.workers import _main; sys.exit(_main())"
    procs = [subprocess.Popen([sys.executable, "-c", entry],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env, text=True) for _ in shards]
    # feed every worker before reading any output (no pipe dead-lock: inputs are small)
    for p, shard in zip(procs, shards):
        p.stdin.write(json.dumps([named[i] for i in shard]))
        p.stdin.close()
    outs = []
    for p in procs:
        out, err = p.stdout.read(), p.stderr.read()
        p.wait()
        if p.returncode != 0:
            raise RuntimeError(f"demo worker failed (exit {p.returncode}):\n{err[-3000:]}")
        outs.append(json.loads(out))
    results: list[Any] = [None] * len(jobs)
    for shard, out in zip(shards, outs):
        for i, r in zip(shard, out):
            results[i] = r
    return results


def _main() -> int:
    import torch

    torch.set_num_threads(1)
    jobs = json.loads(sys.stdin.read())
    try:
        fns = [_resolve(name) for name, _ in jobs]
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    json.dump([fn(**kwargs) for fn, (_, kwargs) in zip(fns, jobs)], sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
