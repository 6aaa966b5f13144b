"""Ablation table from many runs' results.json."""
import json

import yaml

from runs.summarize import main


def fake_run(root, name, cfg, acc, ci):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"accuracy": acc, "ci95": ci, "episodes": 100,
                                                     "config": yaml.safe_dump(cfg)}))


def test_summary_table_has_differing_keys_and_accuracy(tmp_path):
    base = {"DATA": {"DATASET": "Synthetic_few_shot"}, "TRAIN": {"SHOT": 1, "SHOT_TEST": 0},
            "VIDEO": {"HEAD": {"NAME": "MCDP_FSAR"}}, "VFAM": {"ENABLE": True}, "OUTPUT_DIR": "a"}
    fake_run(tmp_path, "full", base, 61.234, 1.1)
    off = json.loads(json.dumps(base))
    off["VFAM"]["ENABLE"] = False
    off["OUTPUT_DIR"] = "b"
    fake_run(tmp_path, "no_vfam", off, 55.0, 1.3)
    table = main([str(tmp_path)])
    assert list(table["run"]) == ["full", "no_vfam"]
    assert "VFAM.ENABLE" in table.columns and "OUTPUT_DIR" not in table.columns
    assert "TRAIN.SHOT" not in table.columns  # same in both runs
    assert list(table["accuracy"]) == ["61.23 ± 1.10", "55.00 ± 1.30"]
    md = (tmp_path / "summary.md").read_text()
    assert "VFAM.ENABLE" in md and "61.23 ± 1.10" in md
    assert (tmp_path / "summary.csv").read_text().startswith("run,")


def test_keys_missing_from_older_runs_take_the_default(tmp_path):
    from runs.config import get_cfg

    default_lambda = get_cfg().VIDEO.HEAD.OTAM_LAMBDA
    old = {"DATA": {"DATASET": "Synthetic_few_shot"}, "VFAM": {"ENABLE": True}}  # predates the newer keys
    new = {"DATA": {"DATASET": "Synthetic_few_shot"}, "VFAM": {"ENABLE": True},
           "TRAIN": {"CACHE_SIZE": get_cfg().TRAIN.CACHE_SIZE}, "VIDEO": {"HEAD": {"OTAM_LAMBDA": 0.1}}}
    fake_run(tmp_path, "old", old, 50.0, 1.0)
    fake_run(tmp_path, "new", new, 51.0, 1.0)
    table = main([str(tmp_path)])
    assert "TRAIN.CACHE_SIZE" not in table.columns  # the default, saved or not
    assert dict(zip(table["run"], table["VIDEO.HEAD.OTAM_LAMBDA"], strict=True)) == {"old": default_lambda,
                                                                                       "new": 0.1}
