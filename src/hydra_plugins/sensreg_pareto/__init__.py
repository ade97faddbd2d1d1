"""Hydra finds sweepers only in the hydra_plugins package: this registers sensreg's
`hydra/sweeper=pareto` (the search itself is sensreg.commands.pareto)."""

from sensreg.commands.pareto import ParetoSearch


class ParetoSweeper(ParetoSearch):
    """hydra/sweeper=pareto (configs/hydra/sweeper/pareto.yaml)."""
