"""`metajax-adapt` as a script: `python experiments/adapt.py [Hydra overrides]` (see metajax/engine/cli.py)."""

from metajax.engine.cli import adapt_main

if __name__ == "__main__":
    adapt_main()
