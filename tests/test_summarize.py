"""Ablation table from many runs' results.json."""
import json

import pytest
import yaml

from runs.summarize import main


def fake_run(root, name, cfg, acc, ci, episode_accuracies=None):
    folder = root / name
    folder.mkdir(parents=True)
    result = {"accuracy": acc, "ci95": ci, "episodes": 100, "config": yaml.safe_dump(cfg)}
    if episode_accuracies is not None:
        result["episode_accuracies"] = episode_accuracies
    (folder / "results.json").write_text(json.dumps(result))


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


def test_runs_differing_only_in_the_seed_merge_into_mean_and_ci_over_seeds(tmp_path):
    def cfg(seed, vfam):
        return {"DATA": {"DATASET": "Synthetic_few_shot"}, "VFAM": {"ENABLE": vfam}, "RANDOM_SEED": seed,
                "OUTPUT_DIR": f"{vfam}{seed}"}
    for seed, acc in enumerate([50.0, 52.0, 54.0]):
        fake_run(tmp_path, f"vfam_s{seed}", cfg(seed, True), acc, 1.0 + seed)
    fake_run(tmp_path, "plain_s0", cfg(0, False), 40.0, 2.0)
    table = main([str(tmp_path), "--over", "RANDOM_SEED"])
    assert list(table["run"]) == ["plain_s0", "vfam_s0"] and "RANDOM_SEED" not in table.columns
    rows = table.set_index("run")
    # mean 52, sample std 2, t(2) = 4.303: half-width 4.303 * 2 / sqrt(3) = 4.97
    assert rows.loc["vfam_s0", "accuracy"] == "52.00 ± 4.97"
    assert rows.loc["vfam_s0", "runs"] == 3 and rows.loc["vfam_s0", "min-max"] == "50.00-54.00"
    assert rows.loc["vfam_s0", "mean episode CI"] == "2.00"
    assert rows.loc["plain_s0", "accuracy"] == "40.00" and rows.loc["plain_s0", "runs"] == 1


def test_merging_over_a_key_no_run_has_is_refused(tmp_path):
    fake_run(tmp_path, "a", {"DATA": {"DATASET": "Synthetic_few_shot"}}, 50.0, 1.0)
    with pytest.raises(SystemExit) as refused:
        main([str(tmp_path), "--over", "NO.SUCH_KEY"])
    assert refused.value.code != 0


def test_paired_differences_compare_each_run_with_its_baseline_on_the_same_episodes_pooled_over_seeds(tmp_path):
    def cfg(seed, vfam):
        return {"DATA": {"DATASET": "Synthetic_few_shot"}, "VFAM": {"ENABLE": vfam}, "RANDOM_SEED": seed}
    episodes = {(0, False): [20.0, 40.0], (0, True): [40.0, 40.0], (1, False): [60.0, 20.0], (1, True): [60.0, 60.0]}
    for (seed, vfam), accs in episodes.items():
        fake_run(tmp_path, f"{'vfam' if vfam else 'base'}_s{seed}", cfg(seed, vfam), sum(accs) / 2, 1.0, accs)
    table = main([str(tmp_path), "--over", "RANDOM_SEED", "--paired", "VFAM.ENABLE=False"]).set_index("run")
    column = "paired vs VFAM.ENABLE=False"
    # differences 20, 0, 0, 40: mean 15, sample std 19.15, 1.96 * 19.15 / 2 = 18.77
    assert table.loc["vfam_s0", column] == "+15.00 ± 18.77"
    assert table.loc["base_s0", column] == "+0.00 ± 0.00"
    per_run = main([str(tmp_path), "--paired", "VFAM.ENABLE=False"]).set_index("run")
    assert per_run.loc["vfam_s1", column] == "+20.00 ± 39.20"  # differences 0, 40


def test_paired_refuses_a_malformed_spec_and_different_episode_counts(tmp_path):
    base = {"DATA": {"DATASET": "Synthetic_few_shot"}, "VFAM": {"ENABLE": False}}
    fake_run(tmp_path, "base", base, 50.0, 1.0, [50.0, 50.0])
    fake_run(tmp_path, "vfam", {**base, "VFAM": {"ENABLE": True}}, 50.0, 1.0, [50.0])
    for spec in ("VFAM.ENABLE", "VFAM.ENABLE=False"):
        with pytest.raises(SystemExit) as refused:
            main([str(tmp_path), "--paired", spec])
        assert refused.value.code != 0


def test_a_nan_accuracy_a_folder_named_results_json_and_a_symlink_loop_are_skipped_with_the_reason(tmp_path,
                                                                                                     capsys):
    cfg = {"DATA": {"DATASET": "Synthetic_few_shot"}, "TRAIN": {"SHOT": 1}}
    fake_run(tmp_path, "good", cfg, 50.0, 1.0)
    fake_run(tmp_path, "nan_text", cfg, "NaN", 1.0)
    fake_run(tmp_path, "nan_number", cfg, 50.0, float("nan"))  # a bare NaN, which JSON does not allow
    (tmp_path / "folder" / "results.json").mkdir(parents=True)
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "results.json").symlink_to("results.json")
    table = main([str(tmp_path)])
    assert list(table["run"]) == ["good"]
    skipped = sorted(line for line in capsys.readouterr().err.splitlines() if line.startswith("skipped: "))
    assert skipped == [
        f"skipped: {tmp_path}/folder/results.json: is a directory, not a results file",
        f"skipped: {tmp_path}/loop/results.json: cannot read results file (Too many levels of symbolic links)",
        f"skipped: {tmp_path}/nan_number/results.json: invalid JSON (Expecting value at line 1; half written?)",
        f"skipped: {tmp_path}/nan_text/results.json: accuracy is 'NaN', not a finite number (a run that did not "
        f"finish its test; rerun it)",
    ]
