"""`python runs/visualize.py region-stats`: do AMCAP's salient regions land on the synthetic world's actor.

The plumbing runs in-process on a tiny world with a random tower; the measures' arithmetic is checked on planted
token masks and boxes."""
import json
from pathlib import Path

import numpy as np
import pytest

from datasets.synthetic_world import MIN_CLASSES, make_world
from datasets.tracks import Track, TrackFile
from datasets.transforms import ViewParams
from runs import amcap_regions, visualize

WORLD_DEMO = str(Path(__file__).resolve().parents[1] / "configs" / "projects" / "MCDPFSAR" / "world" / "demo.yaml")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    make_world(str(root), classes=MIN_CLASSES, videos_per_class=2, frames=8, seed=0)
    return root


def _data(root: Path) -> list[str]:
    """The world demo pointed at `root`, with a random tower and nothing generated."""
    return ["DATA.ANNO_DIR", str(root), "DATA.DATA_ROOT_DIR", str(root), "DATA.TRACK_DIR", str(root / "tracks"),
            "VIDEO.HEAD.PRETRAINED", "", "PRETRAIN.GENERATE", "False", "SYNTHETIC.GENERATE", "False"]


def test_region_stats_writes_every_measure_per_setting_as_a_fraction(world, tmp_path, capsys):
    out = tmp_path / "stats.json"
    argv = ["region-stats", "--cfg", WORLD_DEMO, "--videos", "1", "--json", str(out), *_data(world)]
    assert visualize.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| measure | query side | support side | chance |" in printed and "| actor_hit |" in printed
    saved = json.loads(out.read_text())
    test_classes = (world / "test_class_names.txt").read_text().splitlines()
    assert saved["classes"] == test_classes and saved["videos"] == len(test_classes)  # --videos 1 per class
    for setting in amcap_regions.SETTINGS:
        measures = saved["settings"][setting]
        assert set(measures) == set(amcap_regions.MEASURES)
        assert measures["actor_hit"]["mean"] is not None and measures["actor_hit"]["n"] > 0
        for name, entry in measures.items():
            assert entry["mean"] is None or 0.0 <= entry["mean"] <= 1.0, (setting, name, entry)
    assert saved["settings"]["query"]["anchor_correct"]["n"] == saved["videos"]
    assert saved["settings"]["support"]["anchor_correct"]["n"] == 0  # the support side is told its class
    assert saved["settings"]["query"]["global_anchor_correct"]["n"] == saved["videos"]
    for setting in amcap_regions.SETTINGS:  # every adjacent pair of the 4 x 4 grid is counted at most once
        kinds = saved["pair_interactions"][setting]
        assert set(kinds) == set(amcap_regions.PAIR_KINDS)
        assert 0 < sum(v["n"] for v in kinds.values()) <= 24 * saved["videos"]
        assert all(v["positive"] is None or 0.0 <= v["positive"] <= 1.0 for v in kinds.values())


def test_hit_and_cover_of_planted_regions_and_box():
    cells = amcap_regions.box_token_cells((2 / 8, 2 / 8, 4 / 8, 4 / 8), 8, 8)  # centres of cells 2..3 inside
    assert cells.sum() == 4 and cells[2:4, 2:4].all()
    on, off = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    on[2, 2], off[6, 6] = True, True
    frames = np.stack([cells, np.zeros((8, 8), bool)])  # [K=2, h, w]: the actor on the first key frame only
    assert amcap_regions.region_hits(np.stack([on, off]), frames).tolist() == [True, False]
    assert amcap_regions.cover_fraction(np.stack([on, off]), frames) == pytest.approx(1 / 4)
    assert amcap_regions.cover_fraction(np.stack([off]), frames) == 0.0
    assert np.isnan(amcap_regions.cover_fraction(np.stack([on]), np.zeros((1, 8, 8), bool)))


@pytest.mark.parametrize("view, cols", [
    (ViewParams(0, 64, 0.5, 0.5, False, 64), slice(2, 4)),  # squash 128x64 -> 64x64: x scales by 1/2
    (ViewParams(64, 64, 0.5, 0.5, False, 0), slice(0, 4)),  # short side 64 (128x64), centre crop from x = 32
])
def test_entity_boxes_map_to_token_cells_through_the_test_view(view, cols):
    track = Track(0, "red circle", np.array([0, 9]), np.array([[32.0, 16, 64, 32]] * 2), np.ones(2))
    track_file = TrackFile("v", 10, 128, 64, [track])
    cells = amcap_regions.entity_cells(track_file, [3, 7], view, (128, 64), (8, 8))["red circle"]
    expected = np.zeros((8, 8), bool)
    expected[2:4, cols] = True
    assert cells.shape == (2, 8, 8) and (cells == expected[None]).all()


def test_aligned_words_are_classified_by_the_actor_and_the_class_name():
    actor = {"colour": "purple", "shape": "circle"}
    name, entity_words = "pushing the purple circle towards the red triangle", {"purple", "red", "circle", "triangle"}
    words = ("purple", "circle", "pushing", "red", "up")
    kinds = [amcap_regions.word_kind(w, actor, name, entity_words) for w in words]
    assert kinds == ["actor", "actor", "verb", "other", "other"]


def test_a_folder_that_is_not_the_world_is_refused_naming_meta_json(synthetic_root, tmp_path, capsys):
    for root in (tmp_path, synthetic_root):  # no meta.json; the plain benchmark's catalogue names no actors
        with pytest.raises(SystemExit):
            visualize.main(["region-stats", "--cfg", WORLD_DEMO, *_data(root)])
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "meta.json" in err and "\n" not in err
    (tmp_path / "meta.json").write_text('{"kind": "other"}')
    with pytest.raises(SystemExit):
        visualize.main(["region-stats", "--cfg", WORLD_DEMO, *_data(tmp_path)])
    assert "no 'catalogue'" in capsys.readouterr().err


def test_negative_video_count_is_refused(world, capsys):
    with pytest.raises(SystemExit):
        visualize.main(["region-stats", "--cfg", WORLD_DEMO, "--videos", "-1", *_data(world)])
    assert "--videos" in capsys.readouterr().err


def test_vfam_stats_reads_the_heads_attention_per_frame_with_the_actor_beside_a_distractor(world, tmp_path, capsys):
    """`visualize.py vfam-stats` in-process on the tiny world (random tower, untrained head): every measure is a
    fraction, and the attention it reads is the one VFAM fuses (rows sum to 1 over the slots in view)."""
    from runs import vfam_attention

    out = tmp_path / "vfam.json"
    argv = ["vfam-stats", "--cfg", WORLD_DEMO, "--videos", "1", "--json", str(out), *_data(world)]
    assert visualize.main(argv) == 0
    printed = capsys.readouterr().out
    assert "vfam-stats:" in printed and "actor_mass:" in printed
    saved = json.loads(out.read_text())
    for name in vfam_attention.VFAM_MEASURES:
        entry = saved["measures"][name]
        assert entry["n"] > 0 and 0.0 <= entry["mean"] <= 1.0, (name, entry)
    assert saved["gate"] is None and "gate |mean| none (FUSION replace)" in printed  # the main job's VFAM has none
    assert visualize.main([*argv, "VFAM.FUSION", "residual"]) == 0  # the gated VFAM: nothing fused yet at start
    assert json.loads(out.read_text())["gate"] == 0.0
    with pytest.raises(SystemExit):
        visualize.main([*argv[:-len(_data(world))], *_data(world), "VFAM.ENABLE", "False"])
    assert "set VFAM.ENABLE True" in capsys.readouterr().err


def test_vfam_frame_measures_on_planted_attention():
    from runs.vfam_attention import frame_measures

    weights = np.array([[0.6, 0.3, 0.1, 0.0],  # actor in slot 0, two distractors, an empty slot
                        [0.2, 0.5, 0.3, 0.0],
                        [1.0, 0.0, 0.0, 0.0]])  # no distractor in view: not counted
    present = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [1, 0, 0, 0]], bool)
    got = frame_measures(weights, present, [0])
    assert got == pytest.approx({"actor_mass": 0.4, "distractor_mass": 0.3, "actor_top": 0.5, "top_chance": 1 / 3})
    assert all(np.isnan(v) for v in frame_measures(weights[2:], present[2:], [0]).values())
