"""Write the procedural synthetic few-shot benchmark (datasets/synthetic.py) in the real layout.

    python runs/make_synthetic.py --out DIR [--kind benchmark|world --classes N --videos-per-class M --frames F
        --size S --seed K --distractors D]

--kind world writes the compositional world of datasets/synthetic_world.py instead (class names are sentences of
seen words; at least 20 classes), in the same layout.

Then train on it with DATA.DATASET Synthetic_few_shot, DATA.ANNO_DIR DIR, DATA.DATA_ROOT_DIR DIR
(and DATA.TRACK_DIR DIR/tracks for entity boxes). A generation cut short (the process killed) leaves
`generation.partial` in DIR; a run with SYNTHETIC.GENERATE generates such a folder again.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

if __package__ in (None, ""):  # `python runs/make_synthetic.py`: this repository's packages come first (a Hugging Face
    # `datasets` installed in the same environment must not shadow ours; see README, Layout)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.synthetic import generate  # noqa: E402
from utils.cli import non_negative_int, positive_int  # noqa: E402
from utils.errors import ArgumentError, entry_point  # noqa: E402


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write (DATA.ANNO_DIR and DATA.DATA_ROOT_DIR)")
    parser.add_argument("--kind", choices=("benchmark", "world"), default="benchmark",
                        help="SYNTHETIC.KIND: the fine-grained benchmark or the compositional world")
    parser.add_argument("--classes", type=positive_int, default=30,
                        help="number of classes (train/val/test split of them)")
    parser.add_argument("--videos-per-class", type=positive_int, default=20)
    parser.add_argument("--frames", type=positive_int, default=16, help="frames per video")
    parser.add_argument("--size", type=positive_int, default=64, help="video side in pixels (square, even)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="same seed, same files")
    parser.add_argument("--distractors", type=non_negative_int, default=2, help="moving distractor entities per video")
    args = parser.parse_args(argv)
    try:
        summary = generate(args.kind, args.out, classes=args.classes, videos_per_class=args.videos_per_class,
                           frames=args.frames, size=args.size, seed=args.seed, distractors=args.distractors)
    except ValueError as e:
        raise ArgumentError(f"make_synthetic: {e}") from None
    split = summary["classes"]
    print(f"wrote {summary['videos']} videos of {args.classes} classes (train/val/test {split['train']}/"
          f"{split['val']}/{split['test']}) to {os.path.abspath(args.out)} in {summary['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
