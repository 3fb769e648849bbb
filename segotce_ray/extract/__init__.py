"""Extraction: the Ray Data pipeline (``pipeline``), the actor that runs models on chunks of images and writes pool shards (``actor``), pixel sampling (``sampling``).

May import: pools, inputs, cluster, metrics, seeds, io.
"""
