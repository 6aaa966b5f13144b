"""The README's main job (MCDP-FSAR on the pretrained world) and the from-scratch synthetic demo end to end at
reduced size: data (and for the world the pretrained tiny CLIP) are generated on first use, the run trains,
validates, tests and writes the run folder."""
import json
from pathlib import Path

import pytest
import yaml

from runs.run import main

PROJECT = Path(__file__).resolve().parents[1] / "configs" / "projects" / "MCDPFSAR"
DEMO = str(PROJECT / "synthetic" / "demo.yaml")
WORLD_DEMO = str(PROJECT / "world" / "demo.yaml")


@pytest.mark.slow  # an end-to-end demo run
def test_demo_config_runs_end_to_end_at_reduced_size(tmp_path):
    data = tmp_path / "synthetic"
    out = tmp_path / "demo"
    result = main(["--cfg", DEMO, "DATA.ANNO_DIR", str(data), "DATA.DATA_ROOT_DIR", str(data),
                   "DATA.TRACK_DIR", str(data / "tracks"), "SYNTHETIC.CLASSES", "15", "SYNTHETIC.VIDEOS_PER_CLASS",
                   "5", "SYNTHETIC.FRAMES", "12", "TRAIN.NUM_TRAIN_TASKS", "4", "TRAIN.VAL_FRE_ITER", "2",
                   "TRAIN.NUM_VAL_TASKS", "2", "TRAIN.NUM_TEST_TASKS", "4", "TRAIN.QUERY_PER_CLASS", "1",
                   "DATA.NUM_WORKERS", "0", "OUTPUT_DIR", str(out)])
    assert (data / "train_few_shot.txt").is_file() and (data / "tracks").is_dir()
    saved = json.loads((out / "results.json").read_text())
    assert saved["episodes"] == 4 and saved["accuracy"] == result["accuracy"]
    assert saved["videos_without_tracks"] == 0 and "MCDP_FSAR" in saved["config"]
    assert (out / "curves.png").is_file() and (out / "checkpoints" / "best.pth").is_file()


@pytest.mark.slow  # an end-to-end demo run
def test_world_demo_pretrains_then_trains_the_frozen_tower_from_its_feature_cache_and_tests_with_the_text_prior(
        tmp_path):
    data = tmp_path / "world"
    ckpt = data / "clip.pt"
    result = main(["--cfg", WORLD_DEMO, "DATA.ANNO_DIR", str(data), "DATA.DATA_ROOT_DIR", str(data),
                   "DATA.TRACK_DIR", str(data / "tracks"), "VIDEO.HEAD.PRETRAINED", str(ckpt),
                   "SYNTHETIC.CLASSES", "20", "SYNTHETIC.VIDEOS_PER_CLASS", "3", "SYNTHETIC.FRAMES", "8",
                   "PRETRAIN.STEPS", "2", "PRETRAIN.BATCH_SIZE", "8", "PRETRAIN.EVAL_SCENES", "8",
                   "PRETRAIN.EVAL_EPISODES", "2", "TRAIN.NUM_TRAIN_TASKS", "2", "SOLVER.STEPS_ITER", "2",
                   "TRAIN.VAL_FRE_ITER", "2", "TRAIN.NUM_VAL_TASKS", "2", "TRAIN.NUM_TEST_TASKS", "2",
                   "TRAIN.QUERY_PER_CLASS", "1", "DATA.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "demo")])
    assert ckpt.is_file() and (data / "train_few_shot.txt").is_file() and result["episodes"] == 2
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    run_cfg = yaml.safe_load((tmp_path / "demo" / "config.yaml").read_text())
    assert saved["accuracy"] == result["accuracy"] and run_cfg["VIDEO"]["HEAD"]["NAME"] == "MCDP_FSAR"
    assert run_cfg["TRAIN"]["COMBINE"] and run_cfg["VIDEO"]["HEAD"]["FINETUNE"] == "frozen"
    assert run_cfg["TRAIN"]["FEATURE_CACHE"] and run_cfg["VFAM"]["ATTEND"] == "motion"
