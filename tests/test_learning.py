"""The demo config end to end at reduced size: its data is generated on first use, and a short training run lifts
accuracy on fixed novel-class test episodes clearly above the untrained model's."""
from pathlib import Path

import pytest
import torch

from models import build_model
from runs.run import main
from runs.test_net_few_shot import evaluate
from utils.config import load_config

DEMO = str(Path(__file__).resolve().parents[1] / "configs" / "projects" / "MCDPFSAR" / "synthetic" / "demo.yaml")


@pytest.mark.slow
def test_demo_at_reduced_size_learns(tmp_path):
    data = tmp_path / "synthetic"
    opts = ["DATA.ANNO_DIR", str(data), "DATA.DATA_ROOT_DIR", str(data), "DATA.TRACK_DIR", str(data / "tracks"),
            "SYNTHETIC.CLASSES", "24", "SYNTHETIC.VIDEOS_PER_CLASS", "10", "TRAIN.NUM_TRAIN_TASKS", "100",
            "TRAIN.VAL_FRE_ITER", "50", "TRAIN.NUM_VAL_TASKS", "10", "TRAIN.NUM_TEST_TASKS", "40",
            "SOLVER.STEPS_ITER", "100", "DATA.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "demo")]
    trained = main(["--cfg", DEMO, *opts])
    assert (data / "train_few_shot.txt").is_file() and (tmp_path / "demo" / "curves.png").is_file()
    cfg = load_config(DEMO, opts)
    torch.manual_seed(cfg.RANDOM_SEED)
    untrained = evaluate(build_model(cfg), cfg, "test", cfg.TRAIN.NUM_TEST_TASKS, torch.device("cpu"))
    assert trained["episodes"] == untrained["episodes"] == 40
    assert trained["accuracy"] >= untrained["accuracy"] + 10, (untrained["accuracy"], trained["accuracy"])
