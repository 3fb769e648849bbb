"""Ray start-up in one place: an embedded local Ray by default, a cluster when asked.

``address=None`` and no ``RAY_ADDRESS`` in the environment start an embedded local Ray
(``ray.init()``); ``address="auto"`` or a ``ray://``/``host:port`` address joins a cluster.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs) -> None:
    """Start or join Ray once per process; a no-op when Ray is already initialised."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    opts: dict = {"ignore_reinit_error": True, "logging_level": logging.WARNING,
                  "log_to_driver": True}
    if address is None:
        # "local": always a new embedded instance — never the cluster another process on this
        # machine started last (ray.init() with no address joins that one).
        opts.update(address="local", include_dashboard=False, num_cpus=num_cpus)
        # Embedded default: keep the object store modest on laptops.
        opts.setdefault("object_store_memory", kwargs.pop("object_store_memory", 512 * 1024**2))
    else:
        opts["address"] = address
    opts.update(kwargs)
    log.info("starting Ray (%s)", "embedded local" if address is None else address)
    ray.init(**opts)
