"""Write one benchmark's few-shot split lists and class-name files into an annotation folder.

    python runs/prepare_splits.py --dataset {ssv2_full,ssv2_small,kinetics100,ucf101,hmdb51} --out DIR
        [--source DIR] [--ssv2-labels FILE ...]

The split lists are the public CLIP-FSAR lists; class names are derived from the TRX-format lists of the
same splits (`<class name>/<video id>`) by matching videos, then spelled as CLIP-FSAR spells them (SSv2
templates with [placeholders], "Apply Eye Makeup", "brush hair"). Without `--source` both are downloaded
from GitHub at pinned commits; `--source DIR` reads a local copy laid out like ../shared/splits
(`clipfsar/<benchmark>/<split>_few_shot.txt`, `trx/<dir>/<split>list<NN>.txt`). SSv2-Full has no named
list: pass the SSv2 annotation files (something-something-v2-{train,validation}.json) with
`--ssv2-labels` to name its classes; without them only the split lists are written, and the run says so.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import urllib.request
from collections import Counter, defaultdict
from typing import Sequence

if __package__ in (None, ""):  # `python runs/prepare_splits.py`: this repository's packages come first (a Hugging Face
    # `datasets` installed in the same environment must not shadow ours; see README, Layout)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.splits import SPLITS, SplitError, VideoEntry, numbered_lines, parse_split_file  # noqa: E402
from utils.errors import ArgumentError, entry_point  # noqa: E402

CLIPFSAR_URL = ("https://raw.githubusercontent.com/alibaba-mmai-research/CLIP-FSAR/"
                "30cf0a8cf5287a56a9f37bfceb28e82be776fc5d/configs/projects/CLIPFSAR/{bench}/{split}_few_shot.txt")
TRX_URL = ("https://raw.githubusercontent.com/tobyperrett/trx/390c20aa8ed7e309ae4949464fdcf015c4009329/"
           "splits/{dir}/{split}list{num}.txt")
# benchmark -> (TRX split folder, TRX list number); the CLIP-FSAR folder is the benchmark name.
BENCHMARKS = {
    "ssv2_full": ("ssv2_OTAM", "07"),
    "ssv2_small": ("ssv2_CMN", "03"),
    "kinetics100": ("kinetics_CMN", "03"),
    "ucf101": ("ucf_ARN", "03"),
    "hmdb51": ("hmdb_ARN", "03"),
}
# SSv2 placeholders, longest first, so "[something in it]" wins over "[something]".
SSV2_PLACEHOLDERS = [
    "something similar to other things that are already on the table", "something else that cannot support it",
    "something that cannot actually stand upright", "one of many similar things on the table",
    "something that is not tearable", "something that can't roll", "something unbendable", "something in it",
    "something soft", "some substance", "somewhere", "number of", "something", "Something",
]
_SSV2_RE = re.compile(r"\b(" + "|".join(re.escape(p) for p in SSV2_PLACEHOLDERS) + r"|part(?= of))\b")
# CLIP-FSAR's own irregular spellings (kept: text prompts should match the published configs).
CLIPFSAR_SPELLINGS = {
    "ucf101": {"BlowDryHair": "Blow DryHair", "WalkingWithDog": "Walking WithDog",
               "CuttingInKitchen": "Cutting in Kitchen"},
    "hmdb51": {n: n for n in ("draw_sword", "ride_bike", "shake_hands", "shoot_bow")},
}


def source_paths(source: str, bench: str, split: str) -> tuple[str, str]:
    """(CLIP-FSAR list, TRX list) of one split in a folder laid out like ../shared/splits."""
    trx_dir, num = BENCHMARKS[bench]
    return (os.path.join(source, "clipfsar", bench, f"{split}_few_shot.txt"),
            os.path.join(source, "trx", trx_dir, f"{split}list{num}.txt"))


def download_source(bench: str, dest: str) -> str:
    """Fetch the pinned public lists of one benchmark into `dest` (laid out like ../shared/splits)."""
    trx_dir, num = BENCHMARKS[bench]
    for split in SPLITS:
        clipfsar, trx = source_paths(dest, bench, split)
        for url, path in ((CLIPFSAR_URL.format(bench=bench, split=split), clipfsar),
                          (TRX_URL.format(dir=trx_dir, split=split, num=num), trx)):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as f:
                    f.write(response.read())
            except OSError as e:
                raise SplitError(f"cannot download {url}: {e}; use --source DIR with a local copy") from None
    return dest


def video_key(path: str) -> str:
    """A join key shared by both list formats: file name without extension and without Kinetics'
    `_<start>_<end>` clip suffix (CLIP-FSAR's Kinetics val list drops it for some videos)."""
    name = path.rsplit("/", 1)[-1]
    name = re.sub(r"\.(mp4|avi|webm|mkv)$", "", name)
    return re.sub(r"_\d{6}_\d{6}$", "", name)


def read_trx_list(path: str) -> dict[str, str]:
    """TRX `<class name>/<video id>` lines -> {video key: class name}."""
    names: dict[str, str] = {}
    for line_no, text in numbered_lines(path, "TRX list"):
        if "/" not in text:
            raise SplitError(f"{path}:{line_no}: expected '<class name>/<video id>', got {text!r}")
        name, video = text.rsplit("/", 1)
        key = video_key(video)
        if names.get(key, name) != name:
            raise SplitError(f"{path}:{line_no}: video {video!r} listed under {names[key]!r} and {name!r}")
        names[key] = name
    return names


def names_by_class(entries: Sequence[VideoEntry], video_names: dict[str, str], list_file: str,
                   names_file: str) -> list[str]:
    """The one name of each class id, from the names of its videos; conflicts and gaps are errors."""
    votes: dict[int, Counter] = defaultdict(Counter)
    for entry in entries:
        name = video_names.get(video_key(entry.rest))
        if name is not None:
            votes[entry.class_id][name] += 1
    num_classes = max(e.class_id for e in entries) + 1
    out = []
    for cid in range(num_classes):
        if not votes[cid]:
            raise SplitError(f"{list_file}: no video of class {cid} appears in {names_file}; cannot name it")
        if len(votes[cid]) > 1:
            raise SplitError(f"{list_file}: class {cid} has videos named differently in {names_file}: "
                             f"{dict(votes[cid])}")
        out.append(next(iter(votes[cid])))
    if len(set(out)) != len(out):
        dup = [n for n, c in Counter(out).items() if c > 1]
        raise SplitError(f"{list_file}: several class ids share the names {dup} in {names_file}")
    return out


def clipfsar_spelling(bench: str, name: str) -> str:
    """A TRX class name as CLIP-FSAR spells it."""
    if bench.startswith("ssv2"):
        return _SSV2_RE.sub(lambda m: f"[{m.group(1)}]", name)
    if name in CLIPFSAR_SPELLINGS.get(bench, {}):
        return CLIPFSAR_SPELLINGS[bench][name]
    if bench == "ucf101":
        return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)
    return name.replace("_", " ")


def read_ssv2_labels(paths: Sequence[str]) -> dict[str, str]:
    """SSv2 annotation files (lists of {"id", "template", ...}) -> {video id: class template}.

    The template ("Putting [something] into [something]") is the class; "label" names the objects.
    """
    names: dict[str, str] = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise SplitError(f"{path}: cannot read SSv2 label file ({e})") from None
        if not isinstance(data, list) or not all(isinstance(d, dict) and "id" in d for d in data):
            raise SplitError(f"{path}: expected a list of {{'id', 'template'}} records (something-something-v2-"
                             f"train.json / -validation.json), not the label index (-labels.json)")
        for record in data:
            if "template" not in record:
                raise SplitError(f"{path}: record {record.get('id')!r} has no 'template' (the class)")
            names[str(record["id"])] = record["template"]
    return names


def prepare(bench: str, out: str, source: str, ssv2_labels: Sequence[str] = ()) -> dict[str, int | None]:
    """Write `<split>_few_shot.txt` (+ `<split>_class_names.txt` when names are known) for every split.

    Returns {split: number of classes named, or None where names are unavailable}.
    """
    if bench not in BENCHMARKS:
        raise SplitError(f"unknown benchmark {bench!r}; choose one of {', '.join(BENCHMARKS)}")
    os.makedirs(out, exist_ok=True)
    labels = read_ssv2_labels(ssv2_labels) if ssv2_labels else {}
    named: dict[str, int | None] = {}
    for split in SPLITS:
        clipfsar, trx = source_paths(source, bench, split)
        entries = parse_split_file(clipfsar, split)
        with open(os.path.join(out, f"{split}_few_shot.txt"), "w", encoding="utf-8") as f:
            f.write("".join(f"{split}{e.class_id}{'//' if e.has_path else '/'}{e.rest}\n" for e in entries))
        if labels:
            names = names_by_class(entries, labels, clipfsar, ", ".join(ssv2_labels))
        elif bench == "ssv2_full":
            named[split] = None
            continue
        else:
            names = [clipfsar_spelling(bench, n) for n in names_by_class(entries, read_trx_list(trx), clipfsar, trx)]
        with open(os.path.join(out, f"{split}_class_names.txt"), "w", encoding="utf-8") as f:
            f.write("".join(n + "\n" for n in names))
        named[split] = len(names)
    return named


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(BENCHMARKS))
    parser.add_argument("--out", required=True, help="annotation folder to write (DATA.ANNO_DIR)")
    parser.add_argument("--source", default="", help="local copy laid out like ../shared/splits (no download)")
    parser.add_argument("--ssv2-labels", nargs="+", default=[], metavar="FILE",
                        help="SSv2 annotation JSON files naming each video's class (needed for ssv2_full names)")
    args = parser.parse_args(argv)
    if args.source and not os.path.isdir(args.source):
        raise ArgumentError(f"{args.source}: --source folder not found")
    for path in args.ssv2_labels:
        if not os.path.isfile(path):
            raise ArgumentError(f"{path}: --ssv2-labels file not found")
    if args.source:
        named = prepare(args.dataset, args.out, args.source, args.ssv2_labels)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            named = prepare(args.dataset, args.out, download_source(args.dataset, tmp), args.ssv2_labels)
    for split, count in named.items():
        status = f"{count} class names" if count is not None else "class names UNAVAILABLE"
        print(f"{args.dataset} {split}: {split}_few_shot.txt, {status}")
    if any(count is None for count in named.values()):
        print(f"{args.dataset}: class names are not public in a named list for this benchmark; no "
              f"*_class_names.txt written. Re-run with --ssv2-labels something-something-v2-train.json "
              f"something-something-v2-validation.json (from the SSv2 download) to name the classes.")
    print(f"wrote {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
