"""A short training run lifts accuracy on fixed novel-class test episodes clearly above the untrained model's."""
import pytest
import torch

from models import build_model
from runs.config import load_config
from runs.run import main
from runs.test_net_few_shot import evaluate

DEMO = "configs/projects/MCDPFSAR/synthetic/demo.yaml"


@pytest.mark.slow
def test_short_training_beats_the_untrained_model_on_novel_classes(tmp_path, monkeypatch):
    from tiny_run import REPO

    monkeypatch.chdir(REPO)
    data = tmp_path / "synthetic"
    opts = ["DATA.ANNO_DIR", str(data), "DATA.DATA_ROOT_DIR", str(data), "DATA.TRACK_DIR", str(data / "tracks"),
            "VFAM.ENABLE", "False", "AMCAP.ENABLE", "False", "TRAIN.NUM_TRAIN_TASKS", "150",
            "TRAIN.VAL_FRE_ITER", "150", "TRAIN.NUM_VAL_TASKS", "5", "TRAIN.NUM_TEST_TASKS", "60",
            "SOLVER.STEPS_ITER", "150", "OUTPUT_DIR", str(tmp_path / "run")]
    trained = main(["--cfg", DEMO, *opts])
    cfg = load_config(DEMO, opts)
    torch.manual_seed(cfg.RANDOM_SEED)
    untrained = evaluate(build_model(cfg), cfg, "test", cfg.TRAIN.NUM_TEST_TASKS, torch.device("cpu"))
    assert trained["episodes"] == untrained["episodes"] == 60
    assert trained["accuracy"] >= untrained["accuracy"] + 10, (untrained["accuracy"], trained["accuracy"])
