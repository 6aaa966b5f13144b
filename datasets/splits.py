"""Few-shot split lists in the CLIP-FSAR format and their class-name files: parsing and validation.

A split list holds one video per line, `<split><classid>/<video id>` (SSv2: the video is
`<root>/<video id><ext>`) or `<split><classid>//<relative path>` (the others: the path is given).
The class id indexes that split's class-name file (`<split>_class_names.txt`, one name a line).
"""
from __future__ import annotations

import os
import posixpath
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from utils.atomic import atomic_write
from utils.errors import UserError
from utils.textfiles import read_text

SPLITS = ("train", "val", "test")
_LINE_RE = re.compile(r"^(?P<split>[A-Za-z]+)(?P<cid>\d+)(?P<sep>//?)(?P<rest>.+)$")
_EXT_RE = re.compile(r"\.[A-Za-z0-9]{1,5}$")


class SplitError(UserError, ValueError):
    """A split list or class-name file that cannot be used; the message names the file and line."""

    exit_code = 4
    family = "split"


@dataclass(frozen=True)
class VideoEntry:
    """One line of a split list."""

    class_id: int  # index into the split's class-name list
    video_id: str  # the part after the separator, without extension (track files, caches, episode ids)
    rest: str  # the part after the separator, as written
    has_path: bool  # `//` form: `rest` is a path relative to the data root, extension included
    line: int  # 1-based line number in the split file

    def video_path(self, data_root: str, video_ext: str = ".mp4", frames_folder: bool = False) -> str:
        """Where the video (or, with `frames_folder`, its folder of JPEG frames) lives."""
        if frames_folder:
            rel = self.video_id
        else:
            rel = self.rest if self.has_path else self.video_id + video_ext
        return os.path.join(data_root, rel)


@dataclass
class Split:
    """A parsed and validated split: class names plus the videos of each class."""

    name: str
    class_names: list[str]
    videos: list[VideoEntry]
    list_file: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def videos_by_class(self) -> list[list[VideoEntry]]:
        """Videos grouped by class id, in file order."""
        groups: list[list[VideoEntry]] = [[] for _ in self.class_names]
        for entry in self.videos:
            groups[entry.class_id].append(entry)
        return groups


def strip_extension(path: str) -> str:
    return _EXT_RE.sub("", path)


def parse_split_line(text: str, path: str, line: int, split: str | None = None) -> VideoEntry:
    """Parse one non-empty line; `split` (if given) must match the line's prefix."""
    if "\t" in text:  # `path<TAB>label` (other tools' lists): the label would become part of the file name
        raise SplitError(f"{path}:{line}: tab in {text!r}; a CLIP-FSAR list line is one '<split><classid>/<video id>' "
                         f"or '<split><classid>//<relative path>' (the class is the number after the split name)")
    m = _LINE_RE.match(text)
    if not m:
        raise SplitError(f"{path}:{line}: cannot parse {text!r}; expected '<split><classid>/<video id>' or "
                         f"'<split><classid>//<relative path>'")
    if split is not None and m["split"] != split:
        raise SplitError(f"{path}:{line}: line belongs to split '{m['split']}', expected '{split}': {text!r}")
    has_path = m["sep"] == "//"
    rest = inside_root(m["rest"], path, line)
    return VideoEntry(class_id=int(m["cid"]), video_id=strip_extension(rest) if has_path else rest,
                      rest=rest, has_path=has_path, line=line)


def inside_root(rest: str, path: str, line: int) -> str:
    """The video part of a line as a normal relative path (`a/./b.mp4` and `a//b.mp4` are `a/b.mp4`, so the
    duplicate rule sees one video); a path that leaves the data root (`..`, absolute) is refused: a downloaded list
    must not make the loader read, or prepare_videos write, outside their folders."""
    if rest.startswith("/"):
        raise SplitError(f"{path}:{line}: absolute path {rest!r}; paths in a split list are relative to "
                         f"DATA.DATA_ROOT_DIR (write it relative to the data root)")
    normal = posixpath.normpath(rest)
    if normal == ".." or normal.startswith("../"):
        raise SplitError(f"{path}:{line}: path {rest!r} leaves the data root (paths in a split list are relative to "
                         f"DATA.DATA_ROOT_DIR and stay inside it; move the video under the data root)")
    return normal


def numbered_lines(path: str, what: str) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of the non-empty lines of a list file; a missing file names `what`."""
    if not os.path.exists(path):
        raise SplitError(f"{path}: {what} not found")
    for line_no, raw in enumerate(read_text(path, what, SplitError).splitlines(), start=1):
        text = raw.strip()
        if text:
            yield line_no, text


def parse_split_file(path: str, split: str | None = None) -> list[VideoEntry]:
    """All entries of a split list; malformed or duplicate lines are errors naming file and line."""
    entries: list[VideoEntry] = []
    seen: dict[str, int] = {}
    for line_no, text in numbered_lines(path, "split list"):
        entry = parse_split_line(text, path, line_no, split)
        if entry.video_id in seen:
            raise SplitError(f"{path}:{line_no}: duplicate video '{entry.video_id}' (first on line "
                             f"{seen[entry.video_id]})")
        seen[entry.video_id] = line_no
        entries.append(entry)
    if not entries:
        raise SplitError(f"{path}: split list is empty")
    return entries


def read_class_names(path: str) -> list[str]:
    """Ordered class names, one a line; empty lines inside the list and duplicates are errors."""
    if not os.path.exists(path):
        raise SplitError(f"{path}: class-name file not found")
    lines = read_text(path, "class-name file", SplitError).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = [raw.strip() for raw in lines]
    seen: dict[str, int] = {}
    for line_no, (raw, name) in enumerate(zip(lines, names, strict=True), start=1):
        if not name:
            raise SplitError(f"{path}:{line_no}: empty class name")
        if name in seen:  # compared as used (stripped): `x` and `x  ` would share a prompt and merge per-class results
            raise SplitError(f"{path}:{line_no}: duplicate class name {name!r} (line {seen[name]} names it too"
                             + (f"; this line reads {raw!r}" if raw != name else "") + ")")
        seen[name] = line_no
    if not names:
        raise SplitError(f"{path}: class-name file is empty")
    return names


def validate_split(entries: list[VideoEntry], class_names: list[str], list_file: str, names_file: str) -> None:
    """Every class id must have a name; every name should have videos (the sampler checks counts)."""
    for entry in entries:
        if entry.class_id >= len(class_names):
            raise SplitError(f"{list_file}:{entry.line}: class id {entry.class_id} out of range: {names_file} "
                             f"names {len(class_names)} classes (ids 0..{len(class_names) - 1})")


def split_files(anno_dir: str, split: str) -> tuple[str, str]:
    """(`<split>_few_shot.txt`, `<split>_class_names.txt`) in `anno_dir`."""
    if split not in SPLITS:
        raise SplitError(f"unknown split '{split}'; expected one of {', '.join(SPLITS)}")
    return (os.path.join(anno_dir, f"{split}_few_shot.txt"), os.path.join(anno_dir, f"{split}_class_names.txt"))


def load_split(anno_dir: str, split: str) -> Split:
    """Parse and validate one split of `anno_dir` (DATA.ANNO_DIR)."""
    list_file, names_file = split_files(anno_dir, split)
    entries = parse_split_file(list_file, split)
    if not os.path.isfile(names_file):
        raise SplitError(f"{names_file}: class-name file not found; produce it with `python runs/prepare_splits.py "
                         f"--dataset <benchmark> --out {anno_dir}` (or write one name a line)")
    class_names = read_class_names(names_file)
    validate_split(entries, class_names, list_file, names_file)
    return Split(name=split, class_names=class_names, videos=entries, list_file=list_file)


def split_line(split: str, entry: VideoEntry) -> str:
    """`entry` as a line of `split`'s list (the inverse of `parse_split_line`)."""
    return f"{split}{entry.class_id}{'//' if entry.has_path else '/'}{entry.rest}"


def write_split(anno_dir: str, split: Split) -> None:
    """Write `split` as `<split>_few_shot.txt` and `<split>_class_names.txt` into `anno_dir` (what `load_split`
    reads)."""
    list_file, names_file = split_files(anno_dir, split.name)
    os.makedirs(anno_dir, exist_ok=True)
    for path, lines in ((list_file, [split_line(split.name, e) for e in split.videos]), (names_file,
                                                                                        split.class_names)):
        atomic_write(path, lambda f, lines=lines: f.write("".join(line + "\n" for line in lines)), binary=False)


def class_counts(entries: list[VideoEntry]) -> Counter:
    """Videos per class id."""
    return Counter(entry.class_id for entry in entries)
