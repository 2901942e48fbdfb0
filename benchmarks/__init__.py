"""Benchmarks: qsharedmem against PySide6, multiprocessing, posix_ipc and sysv_ipc.

``python -m benchmarks`` (``make bench``) measures every implementation in the same run on the
same machine, repeats each measurement (median and spread), and writes ``results.md``,
``results.json`` and ``results.png``. ``--quick`` runs every workload once with small sizes:
``make test`` runs it so that the runner cannot rot, and asserts nothing about the times.

Modules:

* ``_harness``: timing and statistics, unique names and the final clean-up sweep, forked child
  processes with a pipe handshake, the machine description;
* ``peers``: one adapter per implementation (the operations each workload needs);
* ``workloads``: the six workloads of issue 5;
* ``report``: the ratio table, the targets, ``results.md`` and the chart;
* ``__main__``: the command line.
"""
