"""Frame-exact decoding: every offered backend returns exactly the frames asked for, in every benchmark's
container/codec, on clips whose pixels carry their own frame number (docs/design.md §4)."""
from __future__ import annotations

import logging

import av
import numpy as np
import pytest
import torch

import utils.logger as logger_module
from datasets.video import (
    DECODERS,
    DEFAULT_DECODER,
    BadVideoError,
    DecordSource,
    PyAVSource,
    TorchcodecSource,
    build_video_source,
    decoder_available,
)
from runs.config import get_cfg, load_config
from utils.config import ConfigError

BITS, GRID_COLS, GRID_ROWS = 10, 4, 3  # 10 bits of frame number + one white and one black reference cell


def numbered_frame(k: int, width: int = 128, height: int = 96) -> np.ndarray:
    """Frame k: a 4x3 grid of flat cells, cell b bright iff bit b of k is set; a moving line gives motion."""
    img = np.empty((height, width, 3), dtype=np.uint8)
    cw, ch = width // GRID_COLS, height // GRID_ROWS
    for b in range(GRID_COLS * GRID_ROWS):
        bit = (k >> b) & 1 if b < BITS else int(b == BITS)
        r, c = divmod(b, GRID_COLS)
        img[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw] = 230 if bit else 25
    img[:, (3 * k) % width] = 128
    return img


def frame_number(img: np.ndarray) -> int:
    """Read the number back from the centres of the cells (any resolution; robust to compression)."""
    h, w = img.shape[:2]
    number = 0
    for b in range(BITS):
        r, c = divmod(b, GRID_COLS)
        cell = img[int((r + 0.3) * h / GRID_ROWS):int((r + 0.7) * h / GRID_ROWS),
                   int((c + 0.3) * w / GRID_COLS):int((c + 0.7) * w / GRID_COLS)]
        number |= int(cell.mean() > 128) << b
    return number


def frame_numbers(frames: np.ndarray) -> list[int]:
    return [frame_number(f) for f in frames]


# name -> (file name, encoder, options): the benchmarks' codecs (UCF101/HMDB51 are MPEG-4 part 2 AVI with
# B-frames like Xvid's; SSv2 is VP9 webm; Kinetics H.264 mp4) plus MJPEG AVI and H.264 in AVI.
CLIPS = {
    "mp4-h264": ("clip.mp4", "libx264", {"crf": "18"}, 60),
    "webm-vp9": ("clip.webm", "libvpx-vp9", {"crf": "30", "b": "0", "deadline": "realtime", "cpu-used": "8"}, 60),
    "avi-mpeg4": ("long.avi", "mpeg4", {"qscale": "3", "bf": "2"}, 320),  # long: decord errs late and early
    "avi-mpeg4-nob": ("nob.avi", "mpeg4", {"qscale": "3"}, 60),
    "avi-mjpeg": ("mjpeg.avi", "mjpeg", {}, 40),
    "avi-h264": ("h264.avi", "libx264", {"crf": "18"}, 160),
}


def write_numbered_clip(path: str, codec: str, options: dict, frames: int, width: int = 128, height: int = 96,
                        fps: int = 25) -> None:
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for k in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(numbered_frame(k, width, height), "rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, tuple[str, int]]:
    folder = tmp_path_factory.mktemp("numbered")
    out = {}
    for name, (file, codec, options, frames) in CLIPS.items():
        write_numbered_clip(str(folder / file), codec, options, frames)
        out[name] = (str(folder / file), frames)
    return out


def offered_backends() -> list:
    """Every registered DATA.DECODER (datasets/video.py:DECODERS), skipped with the reason where it cannot run here:
    a new decoder is frame-checked the day it is registered."""
    return [pytest.param(name, id=name, marks=pytest.mark.skipif(bool(decoder_available(name)),
                                                                 reason=decoder_available(name) or "available"))
            for name in DECODERS]


def test_frame_exactness_covers_every_registered_decoder():
    marks = [m for m in test_every_backend_returns_exactly_the_frames_asked_for.pytestmark if m.args[0] == "backend"]
    assert [p.values[0] for p in marks[0].args[1]] == list(DECODERS)


def index_sets(n: int) -> list[list[int]]:
    """First and last, segment centres, late frames, unsorted with repeats, and a random draw."""
    rng = np.random.default_rng(n)
    return [[0, n - 1], [(2 * k + 1) * n // 16 for k in range(8)], list(range(n - 4, n)),
            [n - 1, 0, n // 2, n // 2, 1], sorted(rng.choice(n, 8, replace=False).tolist())]


def test_numbered_clips_decode_sequentially_to_their_own_numbers(clips):
    """The reference itself: PyAV from the first packet yields frame k carrying k (the code survives codecs)."""
    for path, n in clips.values():
        with av.open(path) as container:
            assert frame_numbers(np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])) \
                == list(range(n)), path


@pytest.mark.parametrize("backend", offered_backends())
@pytest.mark.parametrize("clip", list(CLIPS))
def test_every_backend_returns_exactly_the_frames_asked_for(clips, backend, clip):
    path, n = clips[clip]
    source = build_video_source(False, decoder=backend)
    video = source.open(path, 48)
    assert (video.num_frames, video.width, video.height, video.size) == (n, 128, 96, (64, 48))
    for indices in index_sets(n):
        first = video.frames(indices)
        assert first.shape == (len(indices), 48, 64, 3)
        assert frame_numbers(first) == indices, f"{backend} on {clip}"
        again = source.open(path, 48).frames(indices)  # a fresh open and the same open twice: same pixels
        assert np.array_equal(first, again) and np.array_equal(first, video.frames(indices))


def test_unguarded_decord_returns_wrong_frames_in_avi_and_the_guard_hands_it_to_pyav(clips, caplog, monkeypatch):
    monkeypatch.setattr(logger_module, "_LOGGED_ONCE", set())  # "once" is per process: forget earlier tests' notes
    path, n = clips["avi-mpeg4"]
    indices = [(2 * k + 1) * n // 16 for k in range(8)]
    raw = frame_numbers(DecordSource(exact_only=False).open(path, 48).frames(indices))
    assert raw != indices, "decord now decodes MPEG-4 AVI exactly: DECORD_EXACT_* in datasets/video.py can widen"
    guarded = DecordSource()
    with caplog.at_level(logging.INFO, logger="fsar"):
        for _ in range(3):
            assert frame_numbers(guarded.open(path, 48).frames(indices)) == indices
    assert sum("decoding those videos with PyAV" in r.getMessage() for r in caplog.records) == 1


def test_pyav_decodes_from_the_start_where_timestamps_follow_decode_order(clips, caplog, monkeypatch):
    monkeypatch.setattr(logger_module, "_LOGGED_ONCE", set())
    path, n = clips["avi-h264"]
    with caplog.at_level(logging.INFO, logger="fsar"):
        assert frame_numbers(PyAVSource().open(path, 48).frames([n - 1, 3, n // 2])) == [n - 1, 3, n // 2]
    assert any("from their first frame" in r.getMessage() for r in caplog.records)


class _Decode(torch.utils.data.Dataset):
    def __init__(self, source, items):
        self.source, self.items = source, items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, indices = self.items[i]
        return torch.from_numpy(self.source.open(path, 48).frames(indices))


@pytest.mark.parametrize("backend", offered_backends())
def test_decoding_is_identical_in_two_dataloader_workers(clips, backend):
    items = [(path, index_sets(n)[k % 5]) for k, (path, n) in enumerate(clips.values())] * 2
    source = build_video_source(False, decoder=backend)
    here = [_Decode(source, items)[i] for i in range(len(items))]
    loader = torch.utils.data.DataLoader(_Decode(source, items), batch_size=None, num_workers=2)
    for (path, indices), mine, theirs in zip(items, here, loader, strict=True):
        assert frame_numbers(theirs.numpy()) == indices and torch.equal(mine, theirs), path


def test_pyav_refuses_bad_files_and_frames_past_the_end(tmp_path, clips):
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(b"RIFF" + b"\x00" * 4000)
    with pytest.raises(BadVideoError, match="garbage.avi: unreadable video"):
        PyAVSource().open(str(garbage), 48)
    path, n = clips["webm-vp9"]
    with pytest.raises(BadVideoError, match="too short"):
        PyAVSource().open(path, 48).frames([n])


def test_decoder_key_is_declared_and_unknown_or_unavailable_decoders_are_config_errors():
    assert get_cfg().DATA.DECODER == DEFAULT_DECODER
    with pytest.raises(ConfigError, match="DATA.DECODER"):
        load_config(None, ["DATA.DECODER", "ffmpeg"])
    with pytest.raises(ConfigError, match="DATA.DECODER: unknown decoder 'ffmpeg'"):
        build_video_source(False, decoder="ffmpeg")
    if decoder_available("torchcodec"):
        with pytest.raises(ConfigError, match="DATA.DECODER torchcodec"):
            build_video_source(False, decoder="torchcodec")
    else:
        assert isinstance(build_video_source(False, decoder="torchcodec"), TorchcodecSource)


def write_resolution_change(path: str) -> None:
    """An MPEG-TS H.264 stream whose frames 8..15 are 32x24 after 8 frames at 64x48 (two segments joined, as a
    capture that changed resolution mid-stream)."""
    with open(path, "wb") as joined:
        for start, (width, height) in ((0, (64, 48)), (8, (32, 24))):
            segment = f"{path}.{start}.ts"
            with av.open(segment, "w", format="mpegts") as container:
                stream = container.add_stream("libx264", rate=25)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                for k in range(8):
                    frame = av.VideoFrame.from_ndarray(numbered_frame(start + k, width, height), "rgb24")
                    frame.pts = start + k
                    container.mux(stream.encode(frame))
                container.mux(stream.encode())
            joined.write(open(segment, "rb").read())


@pytest.mark.parametrize("decoder", ["pyav", "decord"])  # torchcodec's message here is unchecked (not installed)
def test_a_resolution_change_mid_stream_is_a_wrong_size_video_naming_the_file(tmp_path, decoder):
    """Both readers used to end in a raw ValueError (frames of two sizes stacked); DATA.DECODER decord hands
    MPEG-TS to PyAV."""
    path = str(tmp_path / "resized_mid_stream.ts")
    write_resolution_change(path)
    video = build_video_source(False, decoder=decoder).open(path, 0)
    assert frame_numbers(video.frames([0, 7])) == [0, 7]
    with pytest.raises(BadVideoError) as bad:
        video.frames([0, 9])
    assert bad.value.exit_code == 5 and str(bad.value) == (
        f"{path}: wrong size video (frame 9 is 32x24, the stream's frames 64x48: its resolution changes mid-stream; "
        f"re-encode it at one size, e.g. with runs/prepare_videos.py)")
