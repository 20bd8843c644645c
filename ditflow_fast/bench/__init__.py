"""Benchmark harness shared by ``ditflow-fast bench`` and the pytest-benchmark suites in benchmarks/.

Modules, leaves first (each imports only those above it):

* ``presets``: the named shapes, each an :class:`ditflow_fast.geometry.AMFGeometry` with a name;
* ``spec``: one case as data (``CaseSpec``: row, mode, preset, dtype, device), its seeded inputs and
  upstream gradient;
* ``peers``: what a user would write instead (faiss top-1, SDPA), as plain callables;
* ``rows``: the registry of benchmark rows (every backend, the research procedure, the GEMM floor,
  the peers): modes, availability, the callable of a case, predicted memory;
* ``cases``: plans a run's cases and builds them by looking their rows up;
* ``timing``: the warm-up and timed-call loop; ``memory``: the fit rule and the per-case peak probe
  (``memprobe``: the fresh process it runs);
* ``refcheck``: each row's AMF against the float64 reference before it is timed;
* ``perf_model``: FLOPs, minimum bytes and datasheet floors; ``record``: machine, versions, commit
  and the results file; ``report``: the table;
* ``runner``: ``run_bench``, one run end to end; the ``ditflow-fast bench`` subcommand is ``ditflow_fast/cli/bench.py``.
"""
