"""Entry points and the engine: run.py (train/test), the training and test loops, and CLI tools."""
from runs import test_net_few_shot, train_net_few_shot  # noqa: F401  (register TRAIN/TEST config keys)
