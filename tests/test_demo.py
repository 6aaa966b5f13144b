"""The README's main job (the MCDP-FSAR synthetic demo) end to end at reduced size: its data is generated on
first use, it trains, validates, tests and writes the run folder."""
import json
from pathlib import Path

from runs.run import main

DEMO = str(Path(__file__).resolve().parents[1] / "configs" / "projects" / "MCDPFSAR" / "synthetic" / "demo.yaml")


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
