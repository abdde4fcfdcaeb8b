"""``kdbench sweep``: a suite run as Ray Tune trials, on this machine or on a Ray cluster.

One role per module, and imports only point down this list (nothing re-exported here, so
importing one module does not import the others; nothing outside the sweep imports it):

- :mod:`bench.sweep.cli`: the subcommand's options, and parsed options into a driver call.
- :mod:`bench.sweep.driver`: the order of work: teachers, packing pilots, student trials,
  post-stages, the parent run and its reconciliation.
- :mod:`bench.sweep.teachers`: the teachers stage, as Ray tasks.
- :mod:`bench.sweep.tune`: Ray for a sweep (started or joined) and the students on Ray Tune.
- :mod:`bench.sweep.localray`: Ray started on this machine: loopback only, checked, watched.
- :mod:`bench.sweep.watchdog`: ends what the driver started for its Ray when the driver dies.
- :mod:`bench.sweep.pilot`: the packing stage: pilots of packed trial shapes, GPU shares.
- :mod:`bench.sweep.report`: what a sweep did, and its console reports.
- :mod:`bench.sweep.compress`: the compression post-stage.
- :mod:`bench.sweep.preflight`: checks before a sweep spends anything.
- :mod:`bench.sweep.progress`: the live view of a running sweep.
- :mod:`bench.sweep.worker`: what runs on a worker (a student trial, a teacher).
- :mod:`bench.sweep.packing`: a trial's memory, the GPU share it needs, the cap it runs under.
- :mod:`bench.sweep.ledger`: the MLflow record of a sweep and its rules.
"""
