"""The pixel judge: does an image of the embedded dataset show what its caption asked for?

Unlike the judge of `judge.py` (a network trained on labels), this one is no
network at all and shares nothing with the generator: it measures the drawn
image directly. It finds the background from the corners, the object as the pixels
that differ from it, and then reads each part's colour where the drawing puts
that part, naming it by the nearest colour word (`toy.COLOURS`). The same
judge run on the dataset's own images must score (nearly) 100 %, with or
without added pixel grain: those are its tests.

A briefly trained model leaves grain in its images. Grain is a matter of
image quality (measured by FID), not of which colours were drawn, so the judge
first takes a 3 x 3 median of every channel (which removes isolated noisy
pixels and keeps flat regions) and sizes the object with robust statistics.

Measured: flowers' petal, centre and background colours; birds' body, wing and
beak colours, facing and background. Not measured: petal count and size.
"""

import numpy as np

from minidiff.corruption import to_uint8
from minidiff.datasets.toy import BIRD_ATTRIBUTES, COLOURS, FLOWER_ATTRIBUTES, KINDS
from minidiff.evaluation.evaluate import reference_set

ALL_BACKGROUNDS = ("green", "gray", "sky blue", "sand")
# Where the parts of a right-facing bird are, relative to the centre of mass of
# the bird's pixels (unit coordinates, x to the right, y down).
BIRD_PARTS = {
    "head": (0.17, -0.17, 0.06),  # (dx, dy, radius), avoiding the eye
    "chest": (0.14, 0.05, 0.05),
    "wing": (-0.07, 0.01, 0.05),
    "beak": (0.34, -0.15, 0.05),
}


def _nearest_colour(pixels, names) -> np.ndarray:
    """Index into `names` of the nearest colour word for each (..., 3) uint8 pixel."""
    table = np.array([COLOURS[n] for n in names], np.float32)
    distance = np.linalg.norm(pixels[..., None, :].astype(np.float32) - table, axis=-1)
    return distance.argmin(-1)


def _mode(values, count: int, exclude=()) -> int:
    values = values[~np.isin(values, list(exclude))] if len(exclude) else values
    return int(np.bincount(values, minlength=count).argmax()) if len(values) else -1


def _grid(size: int):
    coords = (np.arange(size) + 0.5) / size
    return np.meshgrid(coords, coords, indexing="xy")  # x, y of each pixel


def _median3(image) -> np.ndarray:
    """3 x 3 median filter of each channel, edges repeated: (H, W, 3) uint8 -> float32."""
    padded = np.pad(image.astype(np.float32), ((1, 1), (1, 1), (0, 0)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(0, 1))  # (H, W, 3, 3, 3)
    return np.median(windows.reshape(*image.shape, 9), axis=-1)


def _background_and_foreground(image, threshold: float = 70.0):
    """The background colour (median of the four corner patches) and a mask of the object."""
    k = max(1, image.shape[0] // 10)
    corners = np.concatenate(
        [image[:k, :k], image[:k, -k:], image[-k:, :k], image[-k:, -k:]], axis=0
    ).reshape(-1, 3)
    background = np.median(corners, axis=0)
    foreground = np.linalg.norm(image.astype(np.float32) - background, axis=-1) > threshold
    return background, foreground


def read_flower(image) -> dict[str, str | None]:
    x, y = _grid(image.shape[0])
    background, foreground = _background_and_foreground(image)
    result = {"background": ALL_BACKGROUNDS[_nearest_colour(background, ALL_BACKGROUNDS)]}
    if foreground.sum() < 4:
        return result | {"petal_colour": None, "centre_colour": None}
    cx, cy = x[foreground].mean(), y[foreground].mean()
    r = np.hypot(x - cx, y - cy)
    radius = np.percentile(r[foreground], 95)  # the petal tips, ignoring stray pixels
    centres, petals = FLOWER_ATTRIBUTES["centre_colour"], FLOWER_ATTRIBUTES["petal_colour"]
    centre_pixels = image[r < max(0.2 * radius, 1.2 / image.shape[0])]
    centre = _mode(_nearest_colour(centre_pixels, centres), len(centres))
    ring = foreground & (r > 0.45 * radius) & (r < 0.85 * radius)
    petal_labels = _nearest_colour(image[ring], petals)
    same_as_centre = [petals.index(centres[centre])] if centres[centre] in petals else []
    petal = _mode(petal_labels, len(petals), exclude=same_as_centre)
    return result | {
        "centre_colour": centres[centre],
        "petal_colour": petals[petal] if petal >= 0 else None,
    }


def read_bird(image, raw=None) -> dict[str, str | None]:
    """`image` median-filtered; the beak, a few pixels that the median would
    erase, is read from `raw` (the unfiltered image, if given)."""
    raw = image if raw is None else raw
    size = image.shape[0]
    x, y = _grid(size)
    background, foreground = _background_and_foreground(image)
    result = {"background": ALL_BACKGROUNDS[_nearest_colour(background, ALL_BACKGROUNDS)]}
    if foreground.sum() < 4:
        return result | {k: None for k in ("facing", "body_colour", "wing_colour", "beak_colour")}
    cx, cy = x[foreground].mean(), y[foreground].mean()
    # The head is the foreground mass high up on one side of the centre.
    upper = foreground & (y < cy - 0.08)
    right = (upper & (x > cx)).sum() >= (upper & (x < cx)).sum()
    result["facing"] = "right" if right else "left"
    sign = 1.0 if right else -1.0

    def part(name, pixels=image):
        dx, dy, radius = BIRD_PARTS[name]
        return pixels[np.hypot(x - (cx + sign * dx), y - (cy + dy)) < radius]

    colours = BIRD_ATTRIBUTES["body_colour"]
    body = _mode(_nearest_colour(np.concatenate([part("head"), part("chest")]), colours), len(colours))
    wing = _mode(_nearest_colour(part("wing"), colours), len(colours), exclude=[body])
    # The beak is the few pixels near the tip of the head that are neither sky nor body.
    beaks = BIRD_ATTRIBUTES["beak_colour"]
    every_colour = tuple(dict.fromkeys(colours + beaks))
    beak_region = part("beak", raw)
    beak_region = beak_region[np.linalg.norm(beak_region.astype(np.float32) - background, axis=-1) > 70]
    named = [every_colour[i] for i in _nearest_colour(beak_region, every_colour)]
    beak_labels = np.array([beaks.index(n) for n in named if n in beaks and n != colours[body]], np.int64)
    beak = _mode(beak_labels, len(beaks))
    return result | {
        "body_colour": colours[body],
        "wing_colour": colours[wing] if wing >= 0 else None,
        "beak_colour": beaks[beak] if beak >= 0 else None,
    }


def read_attributes(image, kind: str) -> dict[str, str | None]:
    """The attribute values one uint8 image (H, W, 3) shows, read as a flower or a bird."""
    smooth = _median3(image)
    return read_flower(smooth) if kind == "flowers" else read_bird(smooth, raw=image)


def pixel_adherence(images, labels: dict[str, np.ndarray], label_names: dict[str, tuple[str, ...]]) -> dict[str, float]:
    """Fraction of images whose measured attributes match the asked-for labels, per attribute.

    `labels` and `label_names` as in `CaptionedImages` (the "kind" label says
    flower or bird; -1 marks an attribute that does not apply).
    """
    hits: dict[str, list[bool]] = {}
    for i, image in enumerate(np.asarray(images)):
        kind = KINDS[labels["kind"][i]]
        seen = read_attributes(image, kind)
        for name, value in seen.items():
            if labels[name][i] < 0:
                continue
            key = f"{kind}/{name}"
            hits.setdefault(key, []).append(value == label_names[name][labels[name][i]])
    return {k: float(np.mean(v)) for k, v in sorted(hits.items())}


def measure_pixel_adherence(generator, split: str = "test", num_images: int = 128, seed: int = 0,
                            **sampling) -> dict[str, float]:
    """Generate an image for the first caption of `num_images` held-out images of the embedded set's
    `split` ("test": attribute pairs seen in training; "held_out": pairs never seen) with a
    `minidiff.generator.Generator` (`sampling`: its sampling settings), and score them with `pixel_adherence`."""
    reference = reference_set("toy", generator.output_shape[0], num_images=num_images, seed=seed, split=split)
    images = generator.sample([c[0] for c in reference.captions], seed=seed, **sampling)
    return pixel_adherence(to_uint8(images), reference.labels, reference.label_names)


def colour_adherence(scores: dict[str, float]) -> float:
    """One figure of how often images show the colours their captions name: the mean of `pixel_adherence`'s
    colour scores (petal, centre, body, wing, beak)."""
    colours = [score for attribute, score in scores.items() if attribute.endswith("colour")]
    if not colours:
        raise ValueError(f"no colour among the scores {sorted(scores)}")
    return float(np.mean(colours))


def chance(attribute: str) -> float:
    """How often a guess would match, for a key of `pixel_adherence` ("flowers/petal_colour"): one in the
    number of values a caption can name."""
    kind, name = attribute.split("/")
    return 1.0 / len((FLOWER_ATTRIBUTES if kind == "flowers" else BIRD_ATTRIBUTES)[name])


def adherence_lines(seen: dict[str, float], never_seen: dict[str, float]) -> list[str]:
    """One line per attribute, from `pixel_adherence`'s scores on captions of attribute pairs seen in
    training and of pairs never seen, flowers first, each kind's colours before the rest:
    "petal colour: 84 % of images match their caption, 100 % for pairs never seen (chance 14 %)"."""
    kinds = {"flowers": FLOWER_ATTRIBUTES, "birds": BIRD_ATTRIBUTES}
    order = [f"{kind}/{name}" for kind, table in kinds.items()
             for name in sorted(table, key=lambda name: "colour" not in name)]
    lines = []
    for attribute in sorted(seen, key=order.index):
        kind, name = attribute.split("/")
        label = name.replace("_", " ") if "colour" in name else f"{kind[:-1]} {name}"
        never = f", {_percent(never_seen[attribute])} for pairs never seen" if attribute in never_seen else ""
        lines.append(f"{label}: {_percent(seen[attribute])} of images match their caption{never} "
                     f"(chance {_percent(chance(attribute))})")
    return lines


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.0f} %"
