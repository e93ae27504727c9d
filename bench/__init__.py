"""Benchmarks of kapacitor-oncall: ``make bench`` writes ``bench/results.md`` and ``results.png``.

Modules, in the order ``python -m bench`` runs them:

* :mod:`bench.udf_throughput`: our UDFs and InfluxData's examples over pipes/sockets,
  driven by :mod:`bench.driver` with points from :mod:`bench.workload`
  (the anchor checkout is prepared by :mod:`bench.official`);
* :mod:`bench.udf_memory`: alert-state RSS with and without ``expire``;
* :mod:`bench.kapacitord_e2e`: through a real kapacitord;
* :mod:`bench.bridge_load`: the bridge's accept path and drain
  (receiver: :mod:`bench.fast_receiver`);
* :mod:`bench.profile`: cProfile of the hot paths and A/B timings of proposed fixes;
* :mod:`bench.report`: renders the results.

Nothing here edits ``udf/`` or ``bridge/``; every figure carries the command that
reproduces it.
"""
