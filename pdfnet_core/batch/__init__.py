"""Batch cut-outs: the engine behind ``python -m pdfnet_core cutout``.

``config`` (the typed job description), ``jobs`` (inputs, output names, shards), ``manifest``
(what is done, resumable), ``imageio`` (decode, encode, size order), ``stages`` (decode, infer,
render and store of one input, shared by both engines), ``progress`` (bar and lines), ``runner``
(``run_cutout``: set-up, plan, manifest), ``local_engine`` (one machine: prefetch, same-size
batches, writer pool) and ``ray_engine`` (many machines; the only module that imports ray).
Entry point: ``runner.run_cutout(CutoutConfig(...))``.  Nothing is imported here, so that the
command line's argument parsing (which reads ``config``) stays free of torch.
"""
