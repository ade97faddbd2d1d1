"""sensreg's Hydra configs, shipped inside the package as ``sensreg.configs``.

Every option of the groups that make up a run's config (data, model, sens, optim, schedule,
prune, trainer) starts from its node of the typed schema, ``schema.GROUP.OPTION``
(``sensreg.run.config_groups.option_node``): the keys it reads at their defaults. Its YAML file
names that node first in its defaults list and holds only its presets. Hydra imports this
package to read the files, so the nodes are registered wherever the configs are composed:
``sensreg train``, the Pareto sweeper, Hydra's compose API.
"""

from pathlib import Path

from hydra.core.config_store import ConfigStore

from sensreg.run.config_groups import GROUP_SCHEMAS, OWNERS, option_node


def register_schema_nodes() -> None:
    """Store ``schema.GROUP.OPTION`` for every option file of every group, so that a user's new
    option (data/mine.yaml) has its node too, and for every registered dataset, optimizer and prune
    schedule, whose option file may live on another search path (``hydra.searchpath``)."""
    for group in GROUP_SCHEMAS:
        options = {p.stem for p in (Path(__file__).parent / group).glob("*.yaml")}
        options |= set(OWNERS.get(group, ()))
        for option in sorted(options):
            ConfigStore.instance().store(name=f"schema.{group}.{option}", node=option_node(group, option))


register_schema_nodes()
