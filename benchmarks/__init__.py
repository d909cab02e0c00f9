"""modaflow.benchmarks: the benchmark harness and the ``modaflow`` command line.

* :mod:`.harness`: run metadata (commit, hardware, versions), :class:`~.harness.BenchResult`
  written to ``results.json``, confidence intervals, interleaved timing, progress bars.
* :mod:`.report`: ``report.md``, PNG plots and the terminal table.
* :mod:`.solvers`, :mod:`.toy`: the core benchmark (``modaflow bench toy``).
* :mod:`.cli`: ``modaflow train|sample|evaluate|finetune|bench <modality>`` and
  ``modaflow datasets``.

Each modality's ``MODALITY.bench(profile, out_dir, seed)`` runs its benchmark module.
"""
