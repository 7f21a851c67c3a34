"""Pipelines: typed results, image I/O, cropping, orchestration, differential statistics, reports, review export.

Nothing heavy is imported here: importing `pipelines` must stay instant (``--help`` of every tool relies on it).
"""
