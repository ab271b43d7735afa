"""The training engine behind the Hydra entry points: configs, experiments, the training loop, evaluation."""
