"""Built-in synthetic retrieval data: shapes with compositional captions.

Images: 1-3 shapes (size x colour x shape) in a row, left-to-right or top-to-bottom;
captions name them with a relation ("a small red circle left of a large blue square").
Videos: one shape that moves (up/down/left/right), changes colour or grows/shrinks,
optionally next to a still shape ("a green triangle moves up next to a big red square").

Items come in pairs: the second item of a pair is a hard negative of the first.
- Images: it differs in exactly one attribute (a colour, shape or size) or in the
  relation (two shapes swapped).
- Videos: it is the first video played backwards (moves down instead of up, turns red
  instead of blue, shrinks instead of grows). Both clips show the same set of frames,
  so any order-blind model (mean-pooled frames) cannot tell the pair apart, while a
  temporal model can. Frames are encoded losslessly, so the decoded frame sets match
  exactly.

Several paraphrased captions per item (word order, synonyms). The vocabulary is ~45
words and captions are short, so a tiny model learns it in seconds.

Data is deterministic by seed and written once into `cache_dir/<modality>-<hash of the
parameters>/` (PNG images or H.264 MP4s + `manifest.jsonl`), through a temporary
directory renamed into place, so parallel workers and trials never see a partial set.
It is then read like any user data (PIL for images, decord for videos).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageDraw

from unitune.choices import SYNTHETIC_DEFAULTS

GENERATOR_VERSION = 1
COLORS = {"red": (215, 45, 45), "green": (40, 165, 65), "blue": (45, 85, 215), "yellow": (225, 195, 40)}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
RELATIONS = {  # axis -> (forward, reverse) phrasings
    "h": (("left of", "to the left of"), ("right of", "to the right of")),
    "v": (("above", "over"), ("below", "under")),
}
DIRECTIONS = {"up": "down", "down": "up", "left": "right", "right": "left"}
BACKGROUND = (235, 235, 235)
SPLITS = ("train", "val", "test")


def _obj_text(obj, size_word: int = 0, with_size: bool = True) -> str:
    size, color, shape = obj
    return f"a {SIZE_WORDS[size][size_word]} {color} {shape}" if with_size else f"a {color} {shape}"


# ---------------------------------------------------------------- image scenes
def image_captions(scene: dict) -> list[str]:
    """All paraphrases of an image scene {"objects": [(size, color, shape), ...], "axis"}."""
    objects, axis = scene["objects"], scene["axis"]
    out = []
    for syn in (0, 1):
        for prefix in ("", "there is "):
            if len(objects) == 1:
                out.append(prefix + _obj_text(objects[0], syn))
                continue
            for reverse in (False, True):
                for phrase in RELATIONS[axis][reverse]:
                    order = objects[::-1] if reverse else objects
                    out.append(prefix + f" {phrase} ".join(_obj_text(o, syn) for o in order))
        if len(objects) == 1:
            size, color, shape = objects[0]
            out.append(f"a {color} {shape} that is {SIZE_WORDS[size][syn]}")
    return out


def _random_object(rng: random.Random):
    return (rng.choice(SIZES), rng.choice(list(COLORS)), rng.choice(SHAPES))


def _random_image_scene(rng: random.Random) -> dict:
    count = rng.choices((1, 2, 3), weights=(2, 5, 3))[0]
    objects: list[tuple[str, str, str]] = []
    while len(objects) < count:
        obj = _random_object(rng)
        if obj not in objects:
            objects.append(obj)
    return {"objects": objects, "axis": rng.choice(("h", "v")) if count > 1 else "h"}


def _mutate_image_scene(scene: dict, rng: random.Random) -> dict:
    """A copy differing in one attribute of one object, or with two objects swapped."""
    objects = [list(o) for o in scene["objects"]]
    kinds = ["size", "color", "shape"] + (["swap"] if len(objects) > 1 else [])
    kind = rng.choice(kinds)
    if kind == "swap":
        i, j = rng.sample(range(len(objects)), 2)
        objects[i], objects[j] = objects[j], objects[i]
    else:
        field = ("size", "color", "shape").index(kind)
        values = {"size": SIZES, "color": list(COLORS), "shape": SHAPES}[kind]
        obj = rng.choice(objects)
        obj[field] = rng.choice([v for v in values if v != obj[field]])
    return {"objects": [tuple(o) for o in objects], "axis": scene["axis"]}


def _image_key(scene: dict):
    return ("image", tuple(scene["objects"]), scene["axis"])


def _draw(draw: ImageDraw.ImageDraw, shape: str, color, cx: float, cy: float, d: float) -> None:
    r = d / 2
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=color)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)


def _diameter(size: str, canvas: int, count: int) -> float:
    scale = 0.30 if size == "large" else 0.17
    return canvas * scale * (0.85 if count == 3 else 1.0)


def render_image(scene: dict, image_size: int, rng: random.Random) -> Image.Image:
    """Draw the scene (2x supersampled) -> RGB image [image_size, image_size]."""
    canvas = 2 * image_size
    image = Image.new("RGB", (canvas, canvas), BACKGROUND)
    draw = ImageDraw.Draw(image)
    objects, count = scene["objects"], len(scene["objects"])
    cell = canvas / count
    largest = max(_diameter(o[0], canvas, count) for o in objects)
    cross = rng.uniform(largest / 2 + 2, canvas - largest / 2 - 2)
    for i, (size, color, shape) in enumerate(objects):
        d = _diameter(size, canvas, count)
        slack = max(0.0, (cell - d) / 2 - 2) * 0.6
        along = (i + 0.5) * cell + rng.uniform(-slack, slack)
        jitter = rng.uniform(-0.04, 0.04) * canvas
        off = min(max(cross + jitter, d / 2 + 1), canvas - d / 2 - 1)
        cx, cy = (along, off) if scene["axis"] == "h" else (off, along)
        _draw(draw, shape, COLORS[color], cx, cy, d)
    return image.resize((image_size, image_size), Image.Resampling.LANCZOS)


# ---------------------------------------------------------------- video scenes
def video_captions(scene: dict) -> list[str]:
    """All paraphrases of a video scene {"actor", "event", "arg", "companion"}."""
    size, color, shape = scene["actor"]
    event, arg = scene["event"], scene["arg"]
    out = []
    for syn in (0, 1):
        actor = _obj_text(scene["actor"], syn)
        if event == "move":
            core = [f"{actor} moves {arg}", f"{actor} moving {arg}", f"{actor} goes {arg}"]
        elif event == "turn":
            s = SIZE_WORDS[size][syn]
            core = [f"{actor} turns {arg}", f"a {s} {shape} turns from {color} to {arg}", f"{actor} becomes {arg}"]
        else:  # grow / shrink: the size word would be ambiguous, so none
            core = {
                "grow": ["a {} {} grows", "a {} {} gets bigger", "a {} {} growing"],
                "shrink": ["a {} {} shrinks", "a {} {} gets smaller", "a {} {} shrinking"],
            }[event]
            core = [c.format(color, shape) for c in core]
            if syn:
                core = ["there is " + c for c in core]
        if scene["companion"] is not None:
            core = [
                f"{c} {word} {_obj_text(scene['companion'], syn)}"
                for c, word in zip(core, ("next to", "beside", "next to"))
            ]
        out += core
    return list(dict.fromkeys(out))


def _random_video_scene(rng: random.Random) -> dict:
    actor = _random_object(rng)
    event = rng.choices(("move", "turn", "grow", "shrink"), weights=(4, 2, 1, 1))[0]
    if event == "move":
        arg = rng.choice(list(DIRECTIONS))
    elif event == "turn":
        arg = rng.choice([c for c in COLORS if c != actor[1]])
    else:
        arg = None
        actor = ("small" if event == "grow" else "large", actor[1], actor[2])
    companion = None
    if rng.random() < 0.7:
        companion = _random_object(rng)
        while companion == actor:
            companion = _random_object(rng)
    return {"actor": actor, "event": event, "arg": arg, "companion": companion}


def reverse_video_scene(scene: dict) -> dict:
    """The scene played backwards (its frames in reverse order)."""
    size, color, shape = scene["actor"]
    event, arg = scene["event"], scene["arg"]
    if event == "move":
        return {**scene, "arg": DIRECTIONS[arg]}
    if event == "turn":
        return {**scene, "actor": (size, arg, shape), "arg": color}
    flipped = {"grow": ("shrink", "large"), "shrink": ("grow", "small")}[event]
    return {**scene, "event": flipped[0], "actor": (flipped[1], color, shape)}


def _video_key(scene: dict):
    return ("video", scene["actor"], scene["event"], scene["arg"], scene["companion"])


def render_video(scene: dict, image_size: int, num_frames: int, rng: random.Random) -> list[np.ndarray]:
    """Frames uint8 [image_size, image_size, 3] of the scene, in forward time order."""
    canvas = 2 * image_size
    size, color, shape = scene["actor"]
    event, arg = scene["event"], scene["arg"]
    vertical = event == "move" and arg in ("up", "down")
    side = rng.random() < 0.5  # which half the actor's lane is in; the companion takes the other
    lane = canvas * (0.28 if side else 0.72)
    other = canvas * (0.72 if side else 0.28)
    d_small, d_large = _diameter("small", canvas, 2), _diameter("large", canvas, 2)
    margin = d_large / 2 + 2
    spot = rng.uniform(margin, canvas - margin)  # actor position along the lane when still
    companion_spot = rng.uniform(margin, canvas - margin)
    frames = []
    for t in range(num_frames):
        u = t / max(num_frames - 1, 1)
        image = Image.new("RGB", (canvas, canvas), BACKGROUND)
        draw = ImageDraw.Draw(image)
        if scene["companion"] is not None:
            c_size, c_color, c_shape = scene["companion"]
            cx, cy = (other, companion_spot) if vertical else (companion_spot, other)
            _draw(draw, c_shape, COLORS[c_color], cx, cy, _diameter(c_size, canvas, 2))
        d, fill, along = _diameter(size, canvas, 2), COLORS[color], spot
        if event == "move":
            start, end = (canvas - margin, margin) if arg in ("up", "left") else (margin, canvas - margin)
            along = start + u * (end - start)
        elif event == "turn":
            fill = COLORS[arg] if t >= num_frames / 2 else COLORS[color]
        elif event in ("grow", "shrink"):
            a, b = (d_small, d_large) if event == "grow" else (d_large, d_small)
            d = a + u * (b - a)
        cx, cy = (lane, along) if vertical else (along, lane)
        _draw(draw, shape, fill, cx, cy, d)
        frames.append(np.asarray(image.resize((image_size, image_size), Image.Resampling.LANCZOS)))
    return frames


def write_mp4(path: str, frames: list[np.ndarray], fps: int = 8) -> None:
    """Encode RGB frames [H, W, 3] losslessly (H.264, qp 0) into an MP4 file."""
    import av  # only needed to write the synthetic set

    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv444p"
        stream.options = {"qp": "0", "preset": "ultrafast"}
        stream.codec_context.thread_count = 1  # tiny frames: threads cost more than they save
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


# ---------------------------------------------------------------- generation
def _scenes(modality: str, count: int, rng: random.Random, seen: set) -> list[tuple[dict, int | None]]:
    """`count` new scenes as (scene, index of its hard-negative partner within the list)."""
    sample = _random_image_scene if modality == "image" else _random_video_scene
    key = _image_key if modality == "image" else _video_key
    out: list[tuple[dict, int | None]] = []
    for _ in range(200 * count + 1000):
        if len(out) >= count:
            return out
        base = sample(rng)
        if key(base) in seen:
            continue
        if len(out) + 1 == count:  # odd count: the last item has no partner
            seen.add(key(base))
            out.append((base, None))
            continue
        for _ in range(20):
            partner = _mutate_image_scene(base, rng) if modality == "image" else reverse_video_scene(base)
            distinct = modality == "video" or len(set(partner["objects"])) == len(partner["objects"])
            if distinct and key(partner) not in seen and key(partner) != key(base):
                break
        else:
            continue
        seen.update((key(base), key(partner)))
        out += [(base, len(out) + 1), (partner, len(out))]
    raise ValueError(f"cannot make {count} distinct synthetic {modality} scenes; ask for fewer items")


def generate(
    cache_dir: str,
    *,
    modality: str = "image",
    num_train: int = SYNTHETIC_DEFAULTS["num_train"],
    num_val: int = SYNTHETIC_DEFAULTS["num_val"],
    num_test: int = SYNTHETIC_DEFAULTS["num_test"],
    captions_per_item: int = SYNTHETIC_DEFAULTS["captions_per_item"],
    image_size: int = SYNTHETIC_DEFAULTS["image_size"],
    num_frames: int = SYNTHETIC_DEFAULTS["num_frames"],
    seed: int = SYNTHETIC_DEFAULTS["seed"],
) -> str:
    """Generate (once) the synthetic set; returns the path of its `manifest.jsonl`.

    Rows: {"image"|"video": relative path, "captions": [...], "id": int, "split",
    "scene": description, "hard_negative": id of its partner or null}.
    Raises ValueError for impossible parameters.
    """
    if modality not in ("image", "video"):
        raise ValueError(f"modality must be image or video, got {modality!r}")
    counts = {"train": num_train, "val": num_val, "test": num_test}
    if min(counts.values()) < 0 or captions_per_item < 1 or image_size < 8 or num_frames < 2:
        raise ValueError("synthetic: counts must be >= 0, captions_per_item >= 1, image_size >= 8, num_frames >= 2")
    params = {
        "version": GENERATOR_VERSION,
        "modality": modality,
        **counts,
        "captions_per_item": captions_per_item,
        "image_size": image_size,
        "num_frames": num_frames if modality == "video" else None,
        "seed": seed,
    }
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    final = os.path.join(cache_dir, f"{modality}-{digest}")
    manifest = os.path.join(final, "manifest.jsonl")
    if os.path.exists(manifest):
        return manifest
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{modality}-{digest}-", dir=cache_dir)
    try:
        _write_set(tmp, modality, counts, captions_per_item, image_size, num_frames, seed)
        with open(os.path.join(tmp, "params.json"), "w") as handle:
            json.dump(params, handle, indent=1)
        try:
            os.rename(tmp, final)  # atomic; fails if another process finished first
        except OSError:
            if not os.path.exists(manifest):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _write_set(folder, modality, counts, captions_per_item, image_size, num_frames, seed) -> None:
    rng = random.Random(seed)
    seen: set = set()
    media_dir = "images" if modality == "image" else "videos"
    os.makedirs(os.path.join(folder, media_dir))
    rows, next_id = [], 0
    for split in SPLITS:
        scenes = _scenes(modality, counts[split], rng, seen)
        first = next_id
        frames_of: dict[int, list] = {}
        for n, (scene, partner) in enumerate(scenes):
            item_id = first + n
            name = f"{media_dir}/{split}_{n:05d}." + ("png" if modality == "image" else "mp4")
            if modality == "image":
                render_image(scene, image_size, rng).save(os.path.join(folder, name))
                paraphrases = image_captions(scene)
            else:
                if partner is not None and partner < n:  # the partner played backwards
                    frames = frames_of.pop(partner)[::-1]
                else:
                    frames = render_video(scene, image_size, num_frames, rng)
                    if partner is not None:
                        frames_of[n] = frames
                write_mp4(os.path.join(folder, name), frames)
                paraphrases = video_captions(scene)
            picked = rng.sample(paraphrases, min(captions_per_item, len(paraphrases)))
            picked += [paraphrases[k % len(paraphrases)] for k in range(captions_per_item - len(picked))]
            rows.append(
                {
                    modality: name,
                    "captions": picked,
                    "id": item_id,
                    "split": split,
                    "scene": scene,
                    "hard_negative": None if partner is None else first + partner,
                }
            )
        next_id += len(scenes)
    with open(os.path.join(folder, "manifest.jsonl"), "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
