"""The command line: ``sensreg train``, ``eval``, ``compare`` and ``report``, and the Pareto
sweeper. Each command is a thin layer over ``sensreg.run``."""
