"""A run's records: its folder and every file in it (summary.json, metrics.csv, the log, model.pt
and last.pt), the report and plots it leaves, the tables, and run folders read back and compared
(``sensreg compare``). Nothing here trains: the records read a run's config through
``config_keys`` alone, and the training run (``sensreg.run``) writes through them."""
