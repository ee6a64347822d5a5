"""A smaller, harder image-caption set cut from the emoji set, for studies at another scale.

    .venv/bin/python benchmarks/emoji_subset.py OUT.json [--train 492 --val 99 --test 109]
        [--captions 1] [--seed 0] [--emoji DIR]
    .venv/bin/unitune study jobs/emoji_two_tower.yaml data.annotations=OUT.json data.root=DIR

Each split keeps that many of the emoji set's concepts (drawn at random from the concepts of
the same split, so no concept crosses splits), one image of each (one of its styles, at
random) and ``--captions`` of its captions (at random). The defaults give about 700 images
with 99 validation and 109 test queries each way, one caption each: the scale of the
clip-art set in which the study's issue found a 26-RSUM gap it could not resolve. The file
refers to the images by their paths in the emoji set (``data.root`` = the emoji folder); it
copies nothing. Seeded: the same arguments write the same file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_EMOJI = Path(os.environ.get("UNITUNE_EMOJI_DIR", REPO.parent / "shared" / "datasets" / "emoji"))


def subset(images: list[dict], sizes: dict[str, int], captions: int, seed: int) -> list[dict]:
    """``sizes[split]`` concepts of each split, one image and ``captions`` captions each."""
    rng = random.Random(seed)
    by_concept: dict[tuple[str, str], list[dict]] = {}
    for image in images:
        by_concept.setdefault((image["split"], image["concept"]), []).append(image)
    out = []
    for split, size in sizes.items():
        concepts = sorted(c for s, c in by_concept if s == split)
        if size > len(concepts):
            raise SystemExit(f"emoji_subset: split {split!r} has {len(concepts)} concepts, {size} asked")
        for concept in rng.sample(concepts, size):
            image = dict(rng.choice(sorted(by_concept[(split, concept)], key=lambda i: i["imgid"])))
            kept = rng.sample(image["sentences"], min(captions, len(image["sentences"])))
            image["sentences"], image["sentids"] = kept, [s["sentid"] for s in kept]
            out.append(image)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=492)
    parser.add_argument("--val", type=int, default=99)
    parser.add_argument("--test", type=int, default=109)
    parser.add_argument("--captions", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--emoji", type=Path, default=DEFAULT_EMOJI, help="the emoji set's folder")
    args = parser.parse_args()
    source = args.emoji / "dataset_emoji.json"
    if not source.is_file():
        raise SystemExit(f"emoji_subset: {source}: no such file (--emoji or UNITUNE_EMOJI_DIR)")
    images = json.loads(source.read_text())["images"]
    sizes = {"train": args.train, "val": args.val, "test": args.test}
    out = subset(images, sizes, args.captions, args.seed)
    args.out.write_text(json.dumps({"dataset": f"emoji_subset_seed{args.seed}", "images": out}))
    counts = ", ".join(f"{split} {sum(i['split'] == split for i in out)}" for split in sizes)
    print(f"{args.out}: {len(out)} images ({counts}), {args.captions} caption(s) each; data.root={args.emoji}")


if __name__ == "__main__":
    main()
