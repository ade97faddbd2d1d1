"""A training run: the typed config, the run's life (set-up, resume, its states), the epoch loop
and the training step, the run folder and its checkpoints, processes, precision, trackers, and
the report and tables a run leaves; and runs read back: a saved model re-evaluated, run folders
compared, a network exported. It builds on ``sensreg.method``, ``sensreg.data`` and
``sensreg.models``."""
