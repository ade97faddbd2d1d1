"""A training run: the typed config and its checks, the run's life (set-up, resume, its states),
the epoch loop and the training step, processes, precision, compilation, trackers; and a saved
network used again: re-evaluated (``sensreg eval``) and exported. It writes what it does through
``sensreg.records`` and builds on ``sensreg.method``, ``sensreg.data`` and ``sensreg.models``."""
