"""runs/convert_clipfsar_config.py on CLIP-FSAR's own ten configs (tests/data/clipfsar_configs, byte-exact)."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from models import build_model
from runs.clipfsar_keys import BENCHMARKS
from runs.config import load_config
from runs.convert_clipfsar_config import differences, main, read_lineage_config, shipped_config
from utils.config import ConfigError
from utils.solver import lr_factor

DATA = Path(__file__).resolve().parent / "data" / "clipfsar_configs"
REPO = Path(__file__).resolve().parents[1]
TINY = ["VIDEO.HEAD.BACKBONE_NAME", "FSAR-Tiny-ViT", "VIDEO.HEAD.PRETRAINED", "", "DATA.TRAIN_CROP_SIZE", "64",
        "DATA.TEST_CROP_SIZE", "64"]
CONFIGS = [f"configs/projects/CLIPFSAR/{bench}/CLIPFSAR_{BENCHMARKS[bench][2]}_{shot}shot_v1.yaml"
           for bench in BENCHMARKS for shot in (1, 5)]

# Where a converted lineage config differs from our shipped config for the same benchmark, shot and backbone (and
# why; docs/lineage.md, "Coming from CLIP-FSAR"): its own output folder, data root, log period and loader settings;
# the lineage's SSv2 files are <id>.mp4 (ours ship the official .webm); its 5-shot runs train 1-shot (ours 5-shot);
# its K-100 seed. (Its UCF101 5-shot config puts MEAN/STD under SOLVER, so its normalisation is finetune.yaml's
# [0.45]*3 / [0.225]*3; converted to CLIP's, which a CLIP backbone needs here, with a note.)
NAMED = {"OUTPUT_DIR", "LOG_PERIOD", "DATA.DATA_ROOT_DIR", "DATA.NUM_WORKERS", "DATA.PIN_MEMORY"}


def named_differences(config: str) -> set[str]:
    keys = set(NAMED)
    keys |= {"DATA.VIDEO_EXT"} if "/ssv2_" in config else set()
    keys |= {"TRAIN.SHOT", "TRAIN.SHOT_TEST"} if "_5shot" in config else set()
    keys |= {"RANDOM_SEED"} if "/kinetics100/" in config else set()
    return keys


def git_blob(text: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(text) + text).hexdigest()


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A CLIP-FSAR checkout's configs/ folder: the stored files, and the 5-shot ones rebuilt byte-exact."""
    root = tmp_path_factory.mktemp("CLIP-FSAR")
    shutil.copytree(DATA / "configs", root / "configs")
    for path, spec in yaml.safe_load((DATA / "five_shot.yaml").read_text()).items():
        text = (root / path.replace("5shot", "1shot")).read_text()
        for old, new in spec["replace"]:
            assert text.count(old) == 1, (path, old)
            text = text.replace(old, new)
        assert git_blob(text.encode()) == spec["blob"], path
        (root / path).write_text(text)
    return root


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: Path(c).stem)
def test_each_lineage_config_converts_loads_builds_and_differs_from_ours_only_in_named_keys(
        checkout, tmp_path, capsys, config):
    out = tmp_path / "converted.yaml"
    assert main([str(checkout / config), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    written = out.read_text()
    for section in ("mapped with the same meaning", "translated (", "dropped (", "differs from our"):
        assert section in printed
        assert section in written.replace("\n#     ", " ")  # the summary is the file's comment block too
    cfg = load_config(str(out), TINY)
    from runs.run import check_run_config
    check_run_config(cfg)
    torch.manual_seed(0)
    assert build_model(cfg).backbone.embed_dim > 0
    shipped = shipped_config(Path(config).parent.name, _conversion(checkout / config))
    assert set(differences(str(out), shipped)) == named_differences(config)


def _conversion(path: Path):
    from runs.clipfsar_keys import convert

    lineage, _ = read_lineage_config(str(path))
    return convert(lineage, None, None, "out.yaml")[0]


@pytest.mark.parametrize("config", CONFIGS[:2] + CONFIGS[-1:], ids=lambda c: Path(c).stem)
def test_every_lineage_key_is_accounted_for_exactly_once(checkout, config):
    """Mapped, translated or dropped: each key of the resolved lineage config in one place of the summary."""
    lineage, files = read_lineage_config(str(checkout / config))
    assert [Path(f).name for f in files] == [Path(config).name, "OTAM_base.yaml", "finetune.yaml",
                                             "localization-conv.yaml", "base.yaml"]
    c = _conversion(checkout / config)
    places = [k for k, _ in c.mapped] + [k for keys, _ in c.translated for k in keys] + [k for k, _ in c.dropped]
    assert sorted(places) == sorted(lineage)
    assert len(lineage) > 190 and not c.refused


def lineage_lr(solver: dict, folds: float, iteration: int) -> float:
    """CLIP-FSAR's learning rate at an iteration, computed as its code does (runs/train_net_few_shot.py hands
    models/utils/lr_policy.get_lr_at_epoch the epoch cur_iter // STEPS_ITER + NUM_FOLDS * cur_iter / STEPS_ITER)."""
    epoch = iteration // solver["STEPS_ITER"] + folds * iteration / solver["STEPS_ITER"]

    def steps_policy(e: float) -> float:
        steps = solver["STEPS"] + [solver["MAX_EPOCH"]]  # its get_step_index: the loop's index at its break, or
        index = next((i for i, step in enumerate(steps) if e < step), len(steps) - 1)  # its last one
        return solver["LRS"][index - 1] * solver["BASE_LR"]

    if epoch < solver["WARMUP_EPOCHS"]:
        start, end = solver["WARMUP_START_LR"], steps_policy(solver["WARMUP_EPOCHS"])
        return epoch * (end - start) / solver["WARMUP_EPOCHS"] + start
    return steps_policy(epoch)


@pytest.mark.parametrize("bench", sorted(BENCHMARKS))
def test_shipped_and_converted_schedules_give_the_lineage_learning_rate_at_every_iteration(checkout, tmp_path, bench):
    config = next(c for c in CONFIGS if f"/{bench}/" in c)
    lineage, _ = read_lineage_config(str(checkout / config))
    solver = {k.split(".")[1]: v for k, v in lineage.items() if k.startswith("SOLVER.")}
    out = tmp_path / "converted.yaml"
    assert main([str(checkout / config), "--out", str(out)]) == 0
    steps_iter = solver["STEPS_ITER"]  # every 7th iteration, and each side of every unit boundary
    iterations = sorted({*range(0, lineage["TRAIN.NUM_TRAIN_TASKS"], 7),
                         *(k * steps_iter + d for k in range(1, 11) for d in (-1, 0, 1))})
    for cfg in (load_config(str(out)), load_config(shipped_config(bench, _conversion(checkout / config)))):
        for i in iterations:
            ours = cfg.SOLVER.BASE_LR * lr_factor(cfg.SOLVER, i)
            theirs = lineage_lr(solver, lineage["TRAIN.NUM_FOLDS"], i)
            assert ours == pytest.approx(theirs, rel=1e-9), (cfg.OUTPUT_DIR, i)


def test_unknown_keys_and_values_it_cannot_express_are_named_together_and_nothing_is_written(
        checkout, tmp_path, capsys):
    config = checkout / CONFIGS[0]
    edited = config.parent / "edited.yaml"
    edited.write_text(config.read_text().replace("  COLOR_AUG: false", "  COLOR_AUG: true")
                      .replace("  USE_CLASSIFICATION: true\n", "  USE_CLASSIFICATION: true\n  USE_LOCAL: true\n")
                      + "FANCY_KEY: 1\n")
    out = tmp_path / "never.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main([str(edited), "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 3 and err.count("\n") == 1 and "Traceback" not in err
    assert "2 keys this converter does not know: " in err and "TRAIN.USE_LOCAL" in err and "FANCY_KEY" in err
    assert "cannot express AUGMENTATION.COLOR_AUG true (only false is translated: colour jitter on every" in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_class_name_lists_are_the_names_prepare_splits_writes(checkout, tmp_path, capsys, shared_splits):
    """The lineage's TRAIN/TEST.CLASS_NAME lists are, name for name and in order, the class-name files
    runs/prepare_splits.py writes from the public lists; a list that differs from the file is refused."""
    from runs.prepare_splits import main as prepare_splits

    for bench in ("hmdb51", "kinetics100"):
        anno = tmp_path / bench
        assert prepare_splits(["--dataset", bench, "--out", str(anno), "--source", str(shared_splits)]) == 0
        config = next(c for c in CONFIGS if f"/{bench}/" in c)
        out = tmp_path / f"{bench}.yaml"
        assert main([str(checkout / config), "--out", str(out), "--anno-dir", str(anno)]) == 0
        printed = " ".join(capsys.readouterr().out.split())
        for split in ("train", "test"):
            names = len((anno / f"{split}_class_names.txt").read_text().splitlines())
            assert f"the same {names} names as {anno / split}_class_names.txt" in printed
        assert load_config(str(out)).DATA.ANNO_DIR == str(anno)
    names_file = tmp_path / "hmdb51" / "test_class_names.txt"
    names_file.write_text(names_file.read_text().replace("kick ball", "kick a ball"))
    hmdb = next(c for c in CONFIGS if "/hmdb51/" in c)
    with pytest.raises(SystemExit) as exit_info:
        main([str(checkout / hmdb), "--out", str(tmp_path / "no.yaml"), "--anno-dir", str(tmp_path / "hmdb51")])
    assert exit_info.value.code == 3
    assert (f"cannot express TEST.CLASS_NAME [10 entries] (differs from {names_file} at name 3: 'kick ball', the "
            f"file says 'kick a ball')") in capsys.readouterr().err


def test_the_lineage_reader_follows_its_merge_rules(tmp_path):
    """CLIP-FSAR's utils/config.py: `_BASE_RUN` then `_BASE_MODEL` under the file, its configs/pool/base.yaml under
    everything, a nested key containing BASE that the base lacks is dropped, `5e-5` (a YAML 1.1 string) a float."""
    (tmp_path / "configs" / "pool").mkdir(parents=True)
    (tmp_path / "configs" / "pool" / "base.yaml").write_text("A: {X: 1, Y: 1}\nTOP: 0\n")
    (tmp_path / "configs" / "run.yaml").write_text("A: {X: 2}\nSOLVER: {BASE_LR: 1}\n")
    leaf = tmp_path / "configs" / "leaf" / "leaf.yaml"
    leaf.parent.mkdir()
    # `../x` is opened beside the file naming it, `./x` beside the top file (the lineage's path rule)
    (leaf.parent / "model.yaml").write_text("A: {Z: 3}\nSOLVER: {STEPS: [0]}\n")
    (tmp_path / "configs" / "mid.yaml").write_text("_BASE_RUN: ../configs/run.yaml\n_BASE_MODEL: ./model.yaml\n"
                                                   "A: {Y: 4}\n")
    leaf.write_text("_BASE: ../mid.yaml\nSOLVER: {WEIGHT_DECAY: 5e-5, NEW_BASE_KEY: 1}\nA: {X: 5}\n")
    flat, files = read_lineage_config(str(leaf))
    # run.yaml's SOLVER.BASE_LR and the leaf's SOLVER.NEW_BASE_KEY are lost under model.yaml's SOLVER, as there
    assert flat == {"A.X": 5, "A.Y": 4, "A.Z": 3, "TOP": 0, "SOLVER.STEPS": [0], "SOLVER.WEIGHT_DECAY": 5e-5}
    assert [Path(f).name for f in files] == ["leaf.yaml", "mid.yaml", "run.yaml", "model.yaml", "base.yaml"]


def test_our_loader_names_every_unknown_key_of_a_lineage_config_at_once_and_points_at_the_converter(checkout):
    with pytest.raises(ConfigError) as info:
        load_config(str(checkout / CONFIGS[0]))
    message = str(info.value)
    assert "\n" not in message and "OTAM_base.yaml: unknown config keys PRETRAIN.ENABLE, " in message
    assert "CLIPFSAR_SSv2_Full_1shot_v1.yaml: unknown config keys TRAIN.DATASET, " in message
    assert "and " in message and " more" in message  # every one counted, the first twelve named
    assert message.endswith(f"(this is a CLIP-FSAR config: convert it with python runs/convert_clipfsar_config.py "
                            f"{checkout / CONFIGS[0]} --out <ours.yaml>; docs/lineage.md, Coming from CLIP-FSAR)")
