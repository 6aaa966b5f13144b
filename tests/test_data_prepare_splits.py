"""runs/prepare_splits.py offline on ../shared/splits: derived names equal CLIP-FSAR's published lists."""
from __future__ import annotations

import json

import pytest

from datasets.splits import SPLITS, SplitError, load_split, parse_split_file, read_class_names
from runs.prepare_splits import clipfsar_spelling, main

VAL_CLASSES = {"ssv2_small": 12, "kinetics100": 12, "ucf101": 10, "hmdb51": 10}


@pytest.mark.parametrize("bench", sorted(VAL_CLASSES))
def test_derived_class_names_equal_clipfsar_lists(shared_splits, tmp_path, bench):
    out = tmp_path / bench
    assert main(["--dataset", bench, "--out", str(out), "--source", str(shared_splits)]) == 0
    reference = shared_splits / "clipfsar" / bench
    for split in ("train", "test"):
        assert read_class_names(str(out / f"{split}_class_names.txt")) == \
            read_class_names(str(reference / f"{split}_class_names.txt")), split
    val_names = read_class_names(str(out / "val_class_names.txt"))
    assert len(val_names) == VAL_CLASSES[bench]
    for split in SPLITS:
        assert (out / f"{split}_few_shot.txt").read_text().split() == \
            (reference / f"{split}_few_shot.txt").read_text().split()
        load_split(str(out), split)  # every class id has a name


def test_ssv2_full_without_labels_writes_lists_and_says_names_are_unavailable(shared_splits, tmp_path, capsys):
    out = tmp_path / "ssv2_full"
    assert main(["--dataset", "ssv2_full", "--out", str(out), "--source", str(shared_splits)]) == 0
    printed = capsys.readouterr().out
    assert "class names UNAVAILABLE" in printed and "--ssv2-labels" in printed
    assert all((out / f"{s}_few_shot.txt").is_file() for s in SPLITS)
    assert not any((out / f"{s}_class_names.txt").exists() for s in SPLITS)
    with pytest.raises(SplitError, match="prepare_splits"):
        load_split(str(out), "train")


def test_ssv2_full_names_come_from_an_ssv2_label_file(shared_splits, tmp_path):
    """A label file in the SSv2 annotation format (here built from the reference names) names every class."""
    reference = shared_splits / "clipfsar" / "ssv2_full"
    records = []
    for split in SPLITS:
        names_file = reference / f"{split}_class_names.txt"
        names = read_class_names(str(names_file)) if names_file.exists() else [f"Val class {i}" for i in range(12)]
        records += [{"id": e.video_id, "label": "a filled-in label", "template": names[e.class_id]}
                    for e in parse_split_file(str(reference / f"{split}_few_shot.txt"))]
    labels = tmp_path / "something-something-v2-train.json"
    labels.write_text(json.dumps(records))
    out = tmp_path / "out"
    assert main(["--dataset", "ssv2_full", "--out", str(out), "--source", str(shared_splits),
                 "--ssv2-labels", str(labels)]) == 0
    for split in ("train", "test"):
        assert read_class_names(str(out / f"{split}_class_names.txt")) == \
            read_class_names(str(reference / f"{split}_class_names.txt"))
    assert len(read_class_names(str(out / "val_class_names.txt"))) == 12


def test_label_index_file_is_rejected_with_a_clear_message(shared_splits, tmp_path, capsys):
    labels = tmp_path / "something-something-v2-labels.json"
    labels.write_text(json.dumps({"Approaching something with your camera": "0"}))
    with pytest.raises(SystemExit) as info:
        main(["--dataset", "ssv2_full", "--out", str(tmp_path / "o"), "--source", str(shared_splits),
              "--ssv2-labels", str(labels)])
    assert info.value.code == 4  # the split family
    assert capsys.readouterr().err.startswith(f"error: {labels}: expected a list")


@pytest.mark.parametrize("bench, trx, clipfsar", [
    ("ssv2_small", "Tipping something with something in it over, so something in it falls out",
     "Tipping [something] with [something in it] over, so [something in it] falls out"),
    ("ssv2_small", "Moving part of something", "Moving [part] of [something]"),
    ("ssv2_small", "Something falling like a feather or paper", "[Something] falling like a feather or paper"),
    ("ssv2_small", "Trying to bend something unbendable so nothing happens",
     "Trying to bend [something unbendable] so nothing happens"),
    ("ucf101", "ApplyEyeMakeup", "Apply Eye Makeup"),
    ("ucf101", "BlowDryHair", "Blow DryHair"),
    ("hmdb51", "brush_hair", "brush hair"),
    ("kinetics100", "air drumming", "air drumming"),
])
def test_trx_names_are_spelled_as_clipfsar_spells_them(bench, trx, clipfsar):
    assert clipfsar_spelling(bench, trx) == clipfsar
