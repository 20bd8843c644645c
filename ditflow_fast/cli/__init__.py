"""The ``ditflow-fast`` command line, one module per subcommand (``python -m ditflow_fast.cli`` runs it too).

- :mod:`.main`: the parser (every subcommand registered, in ``--help`` order) and :func:`main`, which
  turns a ``ValueError``/``TypeError`` into ``ditflow-fast CMD: error: ...`` and exit status 2;
- :mod:`.info`: ``info``, versions and backends;
- :mod:`.amf`: ``amf``, the reference AMF of a video (``--random``: the dispatch smoke test);
- :mod:`.transfer`: ``transfer``, DiTFlow motion transfer (the parser; the run is :mod:`ditflow_fast.transfer_api`);
  :mod:`.dry_run`: its ``--dry-run``, the family's predicted memory;
- :mod:`.batch`: ``batch``, many transfers on Ray (``ditflow_fast.batch``);
- :mod:`.eval`: ``eval``, Motion Fidelity of two videos;
- :mod:`.app`: ``app``, the web app (``ditflow_fast.app``);
- :mod:`.demo`: ``demo``, registered here, written in ``ditflow_fast/toyworld/cli.py`` (the toy world is an
  application the library never imports);
- :mod:`.bench`: ``bench``, the AMF benchmark (``ditflow_fast.bench``); :mod:`.memprobe`, the fresh process its
  memory probe runs (``python -m ditflow_fast.cli.memprobe``);

Each module's ``add_<command>_parser(sub)`` adds its parser; the modules a command runs are imported only
when it runs, so ``ditflow-fast info`` stays quick and one command's missing extra never breaks another.

This ``__init__`` imports nothing: the entry point is ``ditflow_fast.cli.main:main``, so that a tool
that reuses one subcommand's parser (batch takes ``transfer``'s options) does not pull in every other one,
and no import circle runs through the package.
"""
