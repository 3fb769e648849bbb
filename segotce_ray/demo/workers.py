"""Run the demo's CPU-bound jobs (zoo training, ground-truth fine-tuning) in worker processes.

Each worker is a fresh ``python -m segotce_ray.demo.workers`` process that reads its job
list as JSON on stdin, runs the jobs one after another with one torch thread and
deterministic algorithms, and writes the results as JSON on stdout. Fresh interpreters
(not ``fork``, not ``multiprocessing`` spawn) keep this safe from any caller: no inherited
thread pools, no re-import of the caller's ``__main__``. Results do not depend on the
number of workers: every job is seeded on its own.

Only the job kinds in :data:`JOB_KINDS` can run; nothing is evaluated.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)


def _job_kinds() -> dict[str, Callable[..., Any]]:
    from segotce_ray.demo.ground_truth import pair_job
    from segotce_ray.demo.zoo import train_member_job

    return {"train_member": train_member_job, "ground_truth": pair_job}


JOB_KINDS = ("train_member", "ground_truth")


def run_jobs(kind: str, jobs: list[dict], workers: int = 2) -> list[Any]:
    """Run ``jobs`` (JSON-able kwargs) of ``kind``; results in the order of ``jobs``.

    ``workers <= 1`` (or one job) runs in this process. A failed worker raises
    ``RuntimeError`` with its stderr tail.
    """
    if kind not in JOB_KINDS:
        raise ValueError(f"demo workers: unknown job kind {kind!r}")
    if workers <= 1 or len(jobs) <= 1:
        fn = _job_kinds()[kind]
        return [fn(**j) for j in jobs]
    n = min(workers, len(jobs))
    shards = [list(range(i, len(jobs), n)) for i in range(n)]
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    procs = []
    for shard in shards:
        p = subprocess.Popen([sys.executable, "-m", "segotce_ray.demo.workers", kind],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env, text=True)
        procs.append(p)
    # feed every worker before reading any output (no pipe dead-lock: inputs are small)
    outs = []
    for p, shard in zip(procs, shards):
        p.stdin.write(json.dumps([jobs[i] for i in shard]))
        p.stdin.close()
    for p in procs:
        out, err = p.stdout.read(), p.stderr.read()
        p.wait()
        if p.returncode != 0:
            raise RuntimeError(f"demo {kind} worker failed (exit {p.returncode}):\n{err[-3000:]}")
        outs.append(json.loads(out))
    results: list[Any] = [None] * len(jobs)
    for shard, out in zip(shards, outs):
        for i, r in zip(shard, out):
            results[i] = r
    return results


def _main() -> int:
    kind = sys.argv[1]
    if kind not in JOB_KINDS:
        print(f"unknown job kind {kind!r}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)
    jobs = json.loads(sys.stdin.read())
    fn = _job_kinds()[kind]
    json.dump([fn(**j) for j in jobs], sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
