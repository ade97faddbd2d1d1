"""A training run: the typed config, the run's life (set-up, resume, its states), the epoch loop
and the training step, the run folder and its checkpoints, processes, precision, trackers, and
the report and tables a run leaves. It builds on ``sensreg.method``, ``sensreg.data`` and
``sensreg.models``."""
