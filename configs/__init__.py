"""sensreg's Hydra configs, shipped inside the package as ``sensreg.configs``."""
