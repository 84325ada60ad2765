"""Benchmarks of celery-events against raw Celery and celery-pubsub, on a private Redis.

Run them all with ``python -m benchmarks`` from the repository root (``--smoke`` for a run of a
few seconds that checks they work, ``--only publish,matching`` to pick some). Every figure is
the median [min–max] over repeats; every ratio is measured against raw Celery in the same run,
with the variants interleaved, so that a machine busy with something else slows both sides.
"""
