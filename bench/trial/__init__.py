"""One trial, in small modules from the bottom up.

- ``device``: the device, seeding, precision and memory-format policy (:class:`Execution`).
- ``metrics``, ``evaluate``: predictions and the per-run metrics of a trained student.
- ``context``: :class:`~bench.trial.context.TrialContext`, the harness's implementation of
  the plugin API's ``TrainContext``, and the one function that builds it.
- ``loop``: the training loop, its per-step loss log and its resumable state.
- ``compose``: a trial end to end, from a ``TrialConfig`` to a recorded result.
"""
