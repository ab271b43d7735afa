"""`metajax-evaluate` as a script: `python experiments/evaluate.py [Hydra overrides]` (see metajax/engine/cli.py)."""

from metajax.engine.cli import evaluate_main

if __name__ == "__main__":
    evaluate_main()
