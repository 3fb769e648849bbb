"""Scoring: the result-row schema, metric adapters, Ray tasks, the one fan-out loop (``executor``) and its schedule policies (``schedules``: full, ``adaptive``).

May import: extract, pools, inputs, cluster, metrics, seeds, io.
"""
