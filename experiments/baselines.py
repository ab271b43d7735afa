"""`metajax-baselines` as a script: `python experiments/baselines.py [Hydra overrides]` (see metajax/engine/cli.py)."""

from metajax.engine.cli import baselines_main

if __name__ == "__main__":
    baselines_main()
