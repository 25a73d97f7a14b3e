"""The embedded dataset: procedurally drawn flowers and birds with captions.

No download, deterministic, and generated in seconds (every pixel of a whole
chunk of images is computed at once with numpy broadcasting). Each image is
drawn from a handful of attributes — a flower's petal colour, centre colour,
petal count, size and background; a bird's body, wing and beak colours and the
way it faces — and its captions are sentences composed from those attributes:
"a small red flower with five petals and a yellow centre on a green background".
The attributes are kept as labels, so we can later check whether a generated
image shows what its caption asked for (see `minidiff.evaluation.pixel_judge`).

Some attribute pairs never appear in the training split (HELD_OUT): a model
that draws "a blue flower with a yellow centre" correctly has composed two
words it never saw together.
"""

import numpy as np

from minidiff.datasets.base import CaptionedImages, with_articles

# Pixel values of every colour word. Backgrounds use their own shades so a
# flower on a green background never shares a colour with the flower.
COLOURS = {
    "red": (205, 35, 40),
    "orange": (245, 135, 25),
    "yellow": (245, 215, 40),
    "pink": (245, 140, 190),
    "purple": (125, 50, 175),
    "white": (245, 245, 245),
    "blue": (40, 75, 215),
    "brown": (120, 70, 35),
    "black": (25, 25, 25),
    "green": (70, 125, 55),
    "gray": (135, 135, 140),
    "sky blue": (150, 200, 240),
    "sand": (215, 195, 150),
}

FLOWER_ATTRIBUTES = {
    "petal_colour": ("red", "orange", "yellow", "pink", "purple", "white", "blue"),
    "centre_colour": ("yellow", "brown", "black", "white"),
    "petals": ("three", "four", "five", "six", "eight"),
    "size": ("small", "large"),
    "background": ("green", "gray", "sky blue"),
}
BIRD_ATTRIBUTES = {
    "body_colour": ("red", "yellow", "blue", "black", "white", "brown"),
    "wing_colour": ("red", "yellow", "blue", "black", "white", "brown"),
    "beak_colour": ("orange", "black", "yellow"),
    "facing": ("left", "right"),
    "background": ("sky blue", "green", "sand"),
}
PETAL_COUNTS = {"three": 3, "four": 4, "five": 5, "six": 6, "eight": 8}

# Attribute pairs left out of the training split.
HELD_OUT = {
    "flowers": (("petal_colour", "centre_colour"), {("blue", "yellow"), ("red", "white"), ("purple", "black")}),
    "birds": (("body_colour", "wing_colour"), {("red", "black"), ("blue", "white"), ("yellow", "brown")}),
}

SPLITS = ("train", "test", "held_out")
KINDS = ("flowers", "birds")


def _colour_table(names):
    return np.array([COLOURS[n] for n in names], np.float32) / 255.0


# --- Sampling attributes ---------------------------------------------------------


def _valid(kind: str, values: dict[str, str]) -> bool:
    """Parts that touch must differ in colour, or the image could not show both."""
    if kind == "flowers":
        return values["petal_colour"] != values["centre_colour"]
    return (
        values["body_colour"] != values["wing_colour"]
        and values["beak_colour"] != values["body_colour"]
    )


def sample_attributes(kind: str, split: str, num_images: int, rng) -> dict[str, np.ndarray]:
    """Draw attribute indices for `num_images` images of one kind and split."""
    table = FLOWER_ATTRIBUTES if kind == "flowers" else BIRD_ATTRIBUTES
    pair, held_out = HELD_OUT[kind]
    labels = {name: np.empty(num_images, np.int64) for name in table}
    i = 0
    while i < num_images:
        choice = {name: int(rng.integers(len(values))) for name, values in table.items()}
        values = {name: table[name][j] for name, j in choice.items()}
        is_held_out = (values[pair[0]], values[pair[1]]) in held_out
        if not _valid(kind, values) or is_held_out != (split == "held_out"):
            continue
        for name, j in choice.items():
            labels[name][i] = j
        i += 1
    return labels


# --- Drawing ---------------------------------------------------------------------


def _grid(num_images: int, size: int):
    """Pixel-centre coordinates in [0, 1], shaped (1, size, size) to broadcast over images."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(coords, coords, indexing="ij")
    return x[None], y[None]


def _background(colour, y):
    """A vertical gradient of the background colour, lighter towards the top."""
    shade = 1.08 - 0.16 * y  # (1, S, S)
    return np.clip(colour[:, None, None, :] * shade[..., None], 0, 1).astype(np.float32)  # (N, S, S, 3)


def _paint(canvas, mask, colour):
    """Alpha-blend `colour` (N, 3) into `canvas` (in place) where `mask` (N, S, S) in [0, 1]."""
    canvas += mask[..., None] * (colour[:, None, None, :] - canvas)
    return canvas


def _soft(signed_distance, softness):
    """A soft-edged mask: 1 inside (distance < 0), 0 outside."""
    return np.clip(0.5 - signed_distance / softness, 0.0, 1.0).astype(np.float32)


def draw_flowers(labels, size: int, rng) -> np.ndarray:
    """Flowers as rose curves: k petals are the lobes of r = R |cos(k theta / 2)|."""
    n = len(labels["petal_colour"])
    x, y = _grid(n, size)
    names = FLOWER_ATTRIBUTES
    petal = _colour_table(names["petal_colour"])[labels["petal_colour"]]
    centre = _colour_table(names["centre_colour"])[labels["centre_colour"]]
    background = _colour_table(names["background"])[labels["background"]]
    k = np.array([PETAL_COUNTS[p] for p in names["petals"]], np.float32)[labels["petals"]]
    radius = (np.where(labels["size"] == 0, 0.26, 0.40) + rng.uniform(-0.02, 0.02, n)).astype(np.float32)
    cx, cy = (0.5 + rng.uniform(-0.04, 0.04, (2, n))).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)

    dx, dy = x - cx[:, None, None], y - cy[:, None, None]
    r, theta = np.hypot(dx, dy), np.arctan2(dy, dx)
    lobe = np.abs(np.cos(k[:, None, None] / 2 * (theta - phase[:, None, None])))
    edge = radius[:, None, None] * (0.3 + 0.7 * lobe)  # petal outline at each angle
    softness = 1.2 / size
    canvas = _background(background, y)
    # Petals are a little darker at their tips, which reads as depth.
    petal_shade = (1.0 - 0.18 * np.clip(r / edge, 0, 1))[..., None]
    inside = _soft(r - edge, softness)[..., None]
    canvas = canvas * (1 - inside) + petal[:, None, None, :] * petal_shade * inside
    return _paint(canvas, _soft(r - 0.3 * radius[:, None, None], softness), centre)


def _ellipse(x, y, cx, cy, rx, ry, angle=0.0):
    """Signed distance-like value of an ellipse: < 0 inside (in units of its radius)."""
    c, s = np.cos(angle), np.sin(angle)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    return (np.sqrt((u / rx) ** 2 + (v / ry) ** 2) - 1.0) * min(rx, ry)


def draw_birds(labels, size: int, rng) -> np.ndarray:
    """A bird in profile: body and head ellipses, a wing, a tail, a beak and an eye.

    Drawn facing right; a bird facing left is drawn in mirrored coordinates.
    """
    n = len(labels["body_colour"])
    x, y = _grid(n, size)
    names = BIRD_ATTRIBUTES
    body = _colour_table(names["body_colour"])[labels["body_colour"]]
    wing = _colour_table(names["wing_colour"])[labels["wing_colour"]]
    beak = _colour_table(names["beak_colour"])[labels["beak_colour"]]
    background = _colour_table(names["background"])[labels["background"]]
    facing_left = (labels["facing"] == 0)[:, None, None]
    x = np.where(facing_left, 1.0 - x, x)  # mirror the left-facing ones

    ox, oy = (rng.uniform(-0.04, 0.04, (2, n, 1, 1))).astype(np.float32)
    x, y_local = x - ox, y - oy
    softness = 1.2 / size
    canvas = _background(background, y)
    # The tail: a wedge behind the body.
    tail = np.maximum(np.abs(y_local - 0.56) - (0.28 - x) * 0.9, np.maximum(x - 0.28, 0.1 - x))
    canvas = _paint(canvas, _soft(tail, softness), body)
    canvas = _paint(canvas, _soft(_ellipse(x, y_local, 0.45, 0.56, 0.24, 0.16), softness), body)
    canvas = _paint(canvas, _soft(_ellipse(x, y_local, 0.67, 0.36, 0.12, 0.12), softness), body)
    canvas = _paint(canvas, _soft(_ellipse(x, y_local, 0.42, 0.54, 0.16, 0.085, -0.25), softness), wing)
    # The beak: a triangle pointing forward from the head.
    beak_shape = np.maximum(np.abs(y_local - 0.37) - (0.93 - x) * 0.3, 0.76 - x)
    canvas = _paint(canvas, _soft(beak_shape, softness), beak)
    # The eye is white on a black head, black on any other.
    eye_colour = np.where(labels["body_colour"][:, None] == names["body_colour"].index("black"), 1.0, 0.05)
    eye_colour = np.repeat(eye_colour, 3, axis=1).astype(np.float32)
    return _paint(canvas, _soft(_ellipse(x, y_local, 0.71, 0.33, 0.025, 0.025), softness), eye_colour)


# --- Captions --------------------------------------------------------------------

FLOWER_TEMPLATES = (
    "a {size} {petal_colour} flower with {petals} petals and a {centre_colour} centre on a {background} background",
    "a {petal_colour} flower with a {centre_colour} centre",
    "this {size} flower has {petals} {petal_colour} petals around a {centre_colour} centre",
)
BIRD_TEMPLATES = (
    "a {body_colour} bird with {wing_colour} wings and a {beak_colour} beak facing {facing} on a {background} background",
    "a {body_colour} bird with {wing_colour} wings",
    "this bird has a {body_colour} body, {wing_colour} wings and a {beak_colour} beak and faces {facing}",
)


def compose_captions(kind: str, values: dict[str, str]) -> tuple[str, ...]:
    """Every caption template filled in with one image's attribute values."""
    templates = FLOWER_TEMPLATES if kind == "flowers" else BIRD_TEMPLATES
    return tuple(with_articles(t.format(**values)) for t in templates)


def _values(kind: str, labels, i: int) -> dict[str, str]:
    table = FLOWER_ATTRIBUTES if kind == "flowers" else BIRD_ATTRIBUTES
    return {name: table[name][labels[name][i]] for name in table}


# --- The dataset -----------------------------------------------------------------


def toy_kind(kind: str, split: str, num_images: int, image_size: int, seed: int) -> CaptionedImages:
    """`num_images` flowers or birds of one split, drawn at `image_size` pixels."""
    rng = np.random.default_rng([seed, KINDS.index(kind), SPLITS.index(split)])
    labels = sample_attributes(kind, split, num_images, rng)
    draw = draw_flowers if kind == "flowers" else draw_birds
    # Chunks of 512 images keep the temporary (512, S, S, 3) arrays small.
    chunks = [
        draw({k: v[start : start + 512] for k, v in labels.items()}, image_size, rng)
        for start in range(0, num_images, 512)
    ]
    pixels = np.concatenate(chunks) if chunks else np.zeros((0, image_size, image_size, 3), np.float32)
    pixels = pixels + rng.normal(0, 0.012, pixels.shape).astype(np.float32)  # a little film grain
    images = np.clip(np.round(pixels * 255), 0, 255).astype(np.uint8)
    captions = tuple(compose_captions(kind, _values(kind, labels, i)) for i in range(num_images))
    table = FLOWER_ATTRIBUTES if kind == "flowers" else BIRD_ATTRIBUTES
    return CaptionedImages(
        name=f"toy-{kind}",
        images=images,
        captions=captions,
        labels=labels,
        label_names=dict(table),
    )


def toy_dataset(
    kinds: tuple[str, ...] = KINDS,
    split: str = "train",
    num_images: int = 8000,
    image_size: int = 32,
    seed: int = 0,
) -> CaptionedImages:
    """The embedded dataset: `num_images` images split evenly over `kinds`.

    Labels of the kinds are kept apart: a flower has label -1 for every bird
    attribute and vice versa; the label "kind" says which it is.
    """
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}: choose from {KINDS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {SPLITS}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
    counts = [num_images // len(kinds) + (i < num_images % len(kinds)) for i in range(len(kinds))]
    parts = [toy_kind(kind, split, count, image_size, seed) for kind, count in zip(kinds, counts)]

    names = {"kind": KINDS}
    for part in parts:
        names.update({k: v for k, v in part.label_names.items() if k != "background"})
    names["background"] = tuple(dict.fromkeys(b for p in parts for b in p.label_names["background"]))
    labels = {}
    for name in names:
        columns = []
        for kind, part in zip(kinds, parts):
            if name == "kind":
                columns.append(np.full(len(part), KINDS.index(kind)))
            elif name == "background":  # re-index into the shared list of backgrounds
                local = part.label_names["background"]
                columns.append(np.array([names["background"].index(local[j]) for j in part.labels[name]], np.int64))
            elif name in part.labels:
                columns.append(part.labels[name])
            else:
                columns.append(np.full(len(part), -1))
        labels[name] = np.concatenate(columns).astype(np.int64)
    # Interleave the kinds so any slice of the dataset holds some of each.
    order = np.random.default_rng([seed, 99]).permutation(num_images)
    merged = CaptionedImages(
        name="toy-" + "+".join(kinds) if len(kinds) < len(KINDS) else "toy",
        images=np.concatenate([p.images for p in parts]),
        captions=tuple(c for p in parts for c in p.captions),
        labels=labels,
        label_names=names,
    )
    return merged.subset(order)
