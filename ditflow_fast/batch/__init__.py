"""``ditflow-fast batch``: many transfers on Ray workers that keep their models loaded (docs/scale.md).

A thin layer on :mod:`ditflow_fast.transfer_api`: ``jobs`` reads and checks JOBS.jsonl (each line's
options by ``TransferOptions``), ``worker`` is the long-lived worker (a Ray actor holding
``HeldModel``\\ s, running each job through ``transfer_api.run``), ``runner`` the driver (scheduling,
retries, manifest, summary); the subcommand is ``ditflow_fast/cli/batch.py``, the seconds per job with
and without the reference cache ``scripts/measure_ref_cache.py``. Ray is imported only when a batch
runs (the ``cluster`` extra).
"""
