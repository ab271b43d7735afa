"""`metajax-train` as a script: `python experiments/train.py [Hydra overrides]` (see metajax/engine/cli.py)."""

from metajax.engine.cli import train_main

if __name__ == "__main__":
    train_main()
