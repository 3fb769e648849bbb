"""Results of a run: the transferability matrix (Parquet, CSV, heatmaps) and report.md.

May import: spec, scoring, pools, metrics, io.
"""
