"""Entry points and the engine: run.py (train/test), the training and test loops, the config schema (config.py)
and the command-line tools."""
