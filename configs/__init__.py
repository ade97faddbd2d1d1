"""sensreg's Hydra configs, shipped inside the package as ``sensreg.configs``.

Every option of the groups that make up a run's config (data, model, sens, optim, schedule,
prune, trainer) starts from its node of the typed schema, ``schema.GROUP.OPTION``
(``sensreg.run.config.option_node``): the keys it reads at their defaults. Its YAML file names
that node first in its defaults list and holds only its presets. Hydra imports this package to
read the files, so the nodes are registered wherever the configs are composed: ``sensreg
train``, the Pareto sweeper, Hydra's compose API.
"""

from pathlib import Path

from hydra.core.config_store import ConfigStore

from sensreg.run.config import GROUP_SCHEMAS, option_node

for _group in GROUP_SCHEMAS:
    # Every option file of the group, so that a user's new option (data/mine.yaml) has its node too.
    for _option in sorted(p.stem for p in (Path(__file__).parent / _group).glob("*.yaml")):
        ConfigStore.instance().store(name=f"schema.{_group}.{_option}", node=option_node(_group, _option))
