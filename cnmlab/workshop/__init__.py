"""The workshop: guided labs on top of the engine and the checks.

``labfile`` loads and validates a lab (topology + steps), ``runner`` runs one (start, check,
hint, solve, reset, stop), ``progress`` remembers what a learner passed, ``cli`` is
``cnmlab lab ...``. It sits above both the engine and the checks (a step is checked by the
checks), so the engine never imports it.
"""
