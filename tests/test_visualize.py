"""`runs/visualize.py curves`, `episode` and `text-similarity`: run pictures from metrics.jsonl, episode grids with
track boxes, and the class texts' cosines."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.build import build_model
from runs import visualize
from runs.config import load_config
from utils import plots
from utils.episode import Episode
from utils.errors import ArgumentError, RunFolderError


def _write_metrics(run: Path, records: list[dict]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _open_png(path: Path) -> Image.Image:
    assert path.is_file() and path.stat().st_size > 0
    image = Image.open(path)
    assert image.format == "PNG" and image.width > 0 and image.height > 0
    return image


def _not_blank(image: Image.Image) -> bool:
    return float(np.asarray(image.convert("RGB"), dtype=float).std()) > 5.0


def test_curves_with_null_loss_and_validation_write_the_default_png(tmp_path, capsys):
    run = tmp_path / "run"
    records = [{"iteration": 2, "train/loss": 1.6, "lr": 1e-3},
               {"iteration": 4, "train/loss": None, "lr": 9e-4},  # a non-finite loss written as null
               {"iteration": 4, "val/accuracy": 31.0, "val/ci95": 4.2, "val/best": 31.0},
               {"iteration": 6, "train/loss": 1.1, "lr": 5e-4},
               {"iteration": 8, "train/loss": 0.9, "lr": 0.0},
               {"iteration": 8, "val/accuracy": 28.0, "val/ci95": None, "val/best": 31.0}]
    _write_metrics(run, records)
    assert visualize.main(["curves", "--run", str(run)]) == 0
    assert _not_blank(_open_png(run / "curves.png"))
    assert "curves.png" in capsys.readouterr().out


@pytest.mark.parametrize("records", [
    [{"iteration": 1, "train/loss": 2.3, "lr": 1e-3}],  # one point, no validation records
    [{"iteration": 5, "val/accuracy": 40.0, "val/ci95": 3.0, "val/best": 40.0}],  # validation only, one point
    [],  # an empty file: the run stopped before its first log line
], ids=["one-train-point", "one-val-point", "empty"])
def test_curves_without_validation_or_with_one_point_still_draw(tmp_path, records):
    run = tmp_path / "run"
    _write_metrics(run, records)
    out = tmp_path / "pics" / "c.png"
    assert plots.write_curves(str(run), str(out)) == str(out)
    _open_png(out)


def test_curves_name_the_missing_metrics_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl not found") as err:
        plots.write_curves(str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere" / "metrics.jsonl") in str(err.value)
    assert "\n" not in str(err.value)


def test_curves_name_the_file_with_a_broken_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # A torn last line is dropped (a run killed mid-append); a broken line before others is an error.
    (run / "metrics.jsonl").write_text('{"iteration": 1, "tra\n{"iteration": 2, "train/loss": 2.0}\n')
    with pytest.raises(RunFolderError, match=r"metrics\.jsonl:1: not a JSON record"):
        plots.write_curves(str(run))


def test_unnormalise_inverts_the_mean_std_normalisation():
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    pixels = torch.randint(0, 256, (2, 3, 3, 4, 5), dtype=torch.uint8)  # [N, T, 3, H, W]
    normalised = (pixels.float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    frames = plots.unnormalise(normalised, mean, std)
    assert frames.shape == (2, 3, 4, 5, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, pixels.permute(0, 1, 3, 4, 2).numpy())


def _episode_opts(root: Path) -> list[str]:
    return ["DATA.DATASET", "Synthetic_few_shot", "DATA.ANNO_DIR", str(root), "DATA.DATA_ROOT_DIR", str(root),
            "DATA.TRACK_DIR", str(root / "tracks"), "DATA.NUM_INPUT_FRAMES", "4", "DATA.TEST_SCALE", "64",
            "DATA.TEST_CROP_SIZE", "64", "DATA.TRAIN_JITTER_SCALES", "[64, 64]", "DATA.TRAIN_CROP_SIZE", "64",
            "DATA.NUM_WORKERS", "0", "TRAIN.WAY", "3", "TRAIN.QUERY_PER_CLASS_TEST", "1"]


def test_episode_command_draws_supports_then_queries_with_boxes(synthetic_root, tmp_path, capsys):
    out = tmp_path / "episode.png"
    argv = ["episode", "--split", "test", "--index", "1", "--out", str(out), *_episode_opts(synthetic_root)]
    assert visualize.main(argv) == 0
    image = _open_png(out)
    assert _not_blank(image)
    assert image.height > image.width  # 3 supports + 3 queries as rows, 4 frames as columns
    assert str(out) in capsys.readouterr().out


def test_episode_rows_label_role_class_and_video_and_keep_boxes(synthetic_root):
    cfg = load_config(None, _episode_opts(synthetic_root))
    from datasets import build_dataset

    episode = build_dataset(cfg, "test", [0])[0]
    rows = plots.episode_rows(episode, cfg.DATA.MEAN, cfg.DATA.STD)
    assert [r["role"] for r in rows] == ["support"] * 3 + ["query"] * 3
    query = rows[3]
    assert episode.target_ids[0].rsplit("/", 1)[-1] in query["label"]  # ids of '//' lines are paths
    assert episode.class_names[int(episode.target_labels[0])] in query["label"]
    assert query["frames"].shape == (4, 64, 64, 3)
    assert query["boxes"].shape[:1] == (4,) and query["mask"].any()  # synthetic videos have tracks


def test_episode_without_tracks_draws_frames_only(tmp_path):
    """No DATA.TRACK_DIR: the episode has no box keys; the grid still draws (one row per video)."""
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    # One query of the second class only: not the class-major layout build_episode makes, so spelt out.
    episode = Episode(support_set=torch.randn(2, 3, 3, 16, 24), target_set=torch.randn(1, 3, 3, 16, 24),
                      support_labels=torch.tensor([0, 1]), target_labels=torch.tensor([1]),
                      real_support_labels=torch.tensor([0, 1]), real_target_labels=torch.tensor([1]),
                      class_names=["waving", "jumping"], split_class_names=["waving", "jumping"],
                      support_ids=["a/v1", "b/v2"], target_ids=["b/v3"], split="val", episode_index=7)
    rows = plots.episode_rows(episode, mean, std)
    assert [r["label"].splitlines() for r in rows] == [["support 1", "waving", "v1"], ["support 2", "jumping", "v2"],
                                                      ["query 1", "jumping", "v3"]]
    assert all(r["boxes"] is None for r in rows)
    image = _open_png(Path(plots.draw_episode(episode, mean, std, str(tmp_path / "e.png"))))
    assert _not_blank(image)


# ---------------------------------------------------------------------------------------------- text-similarity
TINY_HEAD = ["VIDEO.HEAD.BACKBONE_NAME", "FSAR-Tiny-ViT", "VIDEO.HEAD.PRETRAINED", "", "DATA.TRAIN_CROP_SIZE", "64",
             "DATA.TEST_CROP_SIZE", "64", "VIDEO.HEAD.TRANSFORMER_MLP_DIM", "256"]


def test_text_similarity_reads_the_checkpoints_text_tower_and_lists_the_closest_pairs_first(synthetic_root, tmp_path,
                                                                                           capsys):
    opts = [*TINY_HEAD, "DATA.ANNO_DIR", str(synthetic_root)]
    cfg = load_config(None, opts)
    names = visualize.episode_class_names(cfg, "", "train")
    fresh = visualize.class_text_similarity(cfg, names)
    model = build_model(cfg)
    with torch.no_grad():  # another text tower than the config builds
        model.backbone.model.token_embedding.weight.normal_(generator=torch.Generator().manual_seed(1))
    text = torch.nn.functional.normalize(model.class_text_features(names).float(), dim=1)
    expected = text @ text.t()
    path = tmp_path / "run.pth"
    torch.save({"model": model.state_dict()}, path)
    loaded = visualize.class_text_similarity(cfg, names, str(path))
    torch.testing.assert_close(loaded, expected)
    assert not torch.allclose(loaded, fresh, atol=1e-3)

    assert visualize.main(["text-similarity", "--checkpoint", str(path), "--top", "2", *opts]) == 0
    lines = capsys.readouterr().out.splitlines()
    pairs = len(names) * (len(names) - 1) // 2
    assert lines[0].startswith(f"{len(names)} classes, {pairs} pairs") and len(lines) == 3
    upper = torch.triu(expected, diagonal=1) - torch.tril(torch.ones_like(expected)) * 2  # only pairs i < j count
    i, j = divmod(int(upper.argmax()), len(names))
    assert lines[1].split()[0] == f"{expected[i, j].item():.3f}"
    assert f"{names[i]}  |  {names[j]}" in lines[1]
    assert float(lines[1].split()[0]) >= float(lines[2].split()[0])


@pytest.mark.parametrize("argv, message", [
    (["--classes", "only one"], "similarity needs two or more"),
    (["--top", "0"], "--top must be > 0"),
    (["--checkpoint", "nowhere.pth"], "nowhere.pth: --checkpoint file not found"),
])
def test_text_similarity_refuses_bad_arguments_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        visualize.main(["text-similarity", *argv, *TINY_HEAD])
    assert err.value.code == ArgumentError.exit_code
    printed = capsys.readouterr().err
    assert printed.startswith("error: ") and message in printed and printed.count("\n") == 1
