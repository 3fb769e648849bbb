"""Pixel pools: the Arrow schema and in-memory pool, the content-addressed store, degeneracy statistics, how tasks see a pool, the score log.

May import: inputs, cluster, metrics, seeds, io.
"""
