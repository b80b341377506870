"""Batch cut-outs: the engine behind ``python -m pdfnet_core cutout``.

``config`` (the typed job description), ``jobs`` (inputs, output names, shards), ``manifest``
(what is done, resumable), ``imageio`` (decode and encode), ``work`` (the per-image work, shared
by both engines), ``progress`` (bar and lines), ``engine`` (one machine: prefetch, same-size
batches, writer pool) and ``ray_engine`` (many machines; the only module that imports ray).
Entry point: ``engine.run_cutout(CutoutConfig(...))``.  Nothing is imported here, so that the
command line's argument parsing (which reads ``config``) stays free of torch.
"""
