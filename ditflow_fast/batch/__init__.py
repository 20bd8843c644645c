"""``ditflow-fast batch``: many transfers on Ray workers that keep their models loaded (docs/scale.md).

``jobs`` reads and checks JOBS.jsonl, ``worker`` is the long-lived worker (a Ray actor), ``runner``
the driver (scheduling, retries, manifest, summary), ``measure`` the seconds per job with and without
the reference cache; the subcommand is ``ditflow_fast/cli/batch.py``. Ray is imported only when a batch runs
(the ``cluster`` extra).
"""
