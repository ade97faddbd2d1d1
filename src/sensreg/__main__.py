"""`python -m sensreg <command> [overrides]`, the same as the `sensreg` console script."""

from sensreg.commands.cli import main

if __name__ == "__main__":
    main()
