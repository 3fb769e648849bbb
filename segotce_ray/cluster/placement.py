"""What the cluster can run: live nodes plus the node types an autoscaler can still add.

A task that asks more memory than any node has waits forever on a fixed cluster, so the
scorer fails it at once; on an autoscaling cluster (one that starts from zero workers, or
adds bigger nodes) the same request is fine: the autoscaler launches a node for it. The
node types an autoscaler can launch are read, in this order, from

1. the cluster config the autoscaler publishes in the GCS (autoscaler v2, KubeRay), via
   ``ray._private.state.state.get_cluster_config()`` (``node_group_configs``: resources,
   ``max_count``);
2. the cluster launcher's ``~/ray_bootstrap_config.yaml`` on the head node
   (``available_node_types.<name>.resources`` / ``max_workers``), read with ``yaml.safe_load``.

``resources.autoscaling`` in a job spec decides how they count:

- ``auto`` (default): a request is infeasible only if no live node and no node type the
  autoscaler can launch satisfies it; a node type whose memory is not stated (the launcher
  leaves memory to be detected at start) satisfies any memory request;
- ``on``: the cluster grows on demand: nothing is refused up front (Ray waits);
- ``off``: a fixed cluster: only live nodes count.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["AUTOSCALING_MODES", "NodeType", "autoscaler_node_types", "cluster_gpus",
           "memory_limit", "node_types_from_bootstrap", "node_types_from_cluster_config"]

AUTOSCALING_MODES = ("auto", "on", "off")
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
UNBOUNDED_ACTORS = 8     # GPUs counted for a node type with no stated maximum


@dataclass(frozen=True)
class NodeType:
    """One kind of node an autoscaler can launch: its resources and how many at most
    (``max_count`` -1 = unbounded)."""

    name: str
    resources: Mapping[str, float] = field(default_factory=dict)
    max_count: int = -1


def node_types_from_cluster_config(config: Any) -> list[NodeType]:
    """Node types of an ``autoscaler_pb2.ClusterConfig`` (those that may have ≥ 1 node)."""
    out = []
    for i, group in enumerate(getattr(config, "node_group_configs", []) or []):
        count = int(getattr(group, "max_count", -1))
        if count == 0:
            continue
        name = getattr(group, "name", "") or f"group{i}"
        out.append(NodeType(name, {k: float(v) for k, v in dict(group.resources).items()}, count))
    return out


def node_types_from_bootstrap(config: Mapping[str, Any]) -> list[NodeType]:
    """Node types of a cluster-launcher config (``available_node_types``), the head included."""
    out = []
    for name, entry in (config.get("available_node_types") or {}).items():
        if not isinstance(entry, Mapping):
            continue
        count = 1 if name == config.get("head_node_type") else \
            int(entry.get("max_workers", config.get("max_workers", -1)))
        if count == 0:
            continue
        res = {k: float(v) for k, v in (entry.get("resources") or {}).items()
               if isinstance(v, (int, float))}
        out.append(NodeType(str(name), res, int(count)))
    return out


def autoscaler_node_types() -> list[NodeType] | None:
    """The node types this cluster's autoscaler can launch, or None when no autoscaler
    config is found (a fixed cluster, or an embedded local Ray)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
        if config is not None and config.node_group_configs:
            return node_types_from_cluster_config(config)
    except Exception as exc:  # noqa: BLE001 - older Ray, no GCS entry: try the launcher's file
        log.debug("no autoscaler cluster config in the GCS: %s", exc)
    path = Path(os.path.expanduser(BOOTSTRAP_CONFIG))
    if path.is_file():
        import yaml

        try:
            return node_types_from_bootstrap(yaml.safe_load(path.read_text()) or {})
        except (OSError, yaml.YAMLError, TypeError, ValueError) as exc:
            log.warning("cannot read the autoscaler config %s: %s", path, exc)
    return None


def _check_mode(autoscaling: str) -> str:
    if autoscaling not in AUTOSCALING_MODES:
        raise ValueError(f"autoscaling must be one of {AUTOSCALING_MODES}, got {autoscaling!r}")
    return autoscaling


def memory_limit(live_nodes: Iterable[Mapping[str, Any]], node_types: list[NodeType] | None,
                 autoscaling: str = "auto") -> float | None:
    """The largest ``memory`` one task may ask for, or None when nothing is to be refused.

    live_nodes: ``ray.nodes()`` entries; node_types: :func:`autoscaler_node_types`.
    """
    mode = _check_mode(autoscaling)
    if mode == "on":
        return None
    live = max((float(n.get("Resources", {}).get("memory", 0)) for n in live_nodes
                if n.get("Alive")), default=0.0)
    if mode == "auto" and node_types:
        if any("memory" not in t.resources for t in node_types):
            return None                   # a node type whose memory is detected at start
        live = max(live, max(t.resources["memory"] for t in node_types))
    return live if live > 0 else None


def cluster_gpus(live_gpus: float, node_types: list[NodeType] | None,
                 autoscaling: str = "auto") -> int:
    """GPUs extraction may plan for: the live ones, or (when none is up yet and autoscaling is
    not ``off``) those the autoscaler can launch; an unbounded type counts as
    :data:`UNBOUNDED_ACTORS`."""
    if int(live_gpus) > 0 or _check_mode(autoscaling) == "off" or not node_types:
        return int(live_gpus)
    total = 0
    for t in node_types:
        per_node = int(t.resources.get("GPU", 0))
        if per_node:
            total += UNBOUNDED_ACTORS if t.max_count < 0 else per_node * t.max_count
    return total
