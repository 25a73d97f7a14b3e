"""Reading files from disk: image files into square uint8 arrays, caption files into lines.

Real datasets are untidy: a truncated JPEG, a grayscale or CMYK scan, a PNG
with transparency, a caption file with a blank line or a line that is only
"{}", an id in the metadata whose file is gone. Nothing here drops such a
thing silently: every loader passes a `Skipped` tally along, and prints what
it skipped, how many of each and an example of each, when it is done.
"""

import collections
import concurrent.futures
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from minidiff.captions import words
from minidiff.datasets.base import CaptionedImages

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


NO_WORDS = "caption with no words (dropped)"
NO_USABLE_CAPTION = "image with no usable caption (skipped)"


class Skipped:
    """A tally of what a loader skipped (or repaired), by reason, with one example path each."""

    def __init__(self):
        self.counts = collections.Counter()
        self.examples = {}

    def add(self, reason: str, example) -> None:
        self.counts[reason] += 1
        self.examples.setdefault(reason, str(example))

    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)

    def report(self, what: str, file=sys.stderr) -> None:
        """Print one line per reason, e.g. '  3 x unreadable image file (e.g. jpg/image_00042.jpg: ...)'."""
        if not self.counts:
            return
        print(f"{what}: {self.total()} problem(s) in the input files:", file=file)
        for reason, count in sorted(self.counts.items()):
            print(f"  {count} x {reason} (e.g. {self.examples[reason]})", file=file)


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One image to read: where it is, its captions, its class, and an optional crop box.

    box: (x, y, width, height) in pixels of the original image, as in CUB's
    bounding_boxes.txt; None means "the centred square".
    """

    path: Path
    captions: tuple[str, ...]
    label: int = -1
    box: tuple[float, float, float, float] | None = None


# A bird's crop is this many times its bounding box's longer side (see square_crop).
BOX_ENLARGE = 1.5


class UnreadableImage(ValueError):
    """An image file that cannot be decoded."""


def square_crop(width: int, height: int, box=None, enlarge: float = BOX_ENLARGE) -> tuple[int, int, int, int]:
    """The square (left, top, right, bottom) to cut from a width x height image.

    Without a box: the largest centred square. With a box: a square of side
    `enlarge` x the box's longer side, centred on the box (text-to-image papers
    on CUB crop this way, so the bird fills most of the picture but keeps some
    surroundings), shifted to stay inside the image and no larger than it.
    """
    if box is None:
        side = min(width, height)
        centre_x, centre_y = width / 2, height / 2
    else:
        x, y, w, h = box
        side = min(max(w, h) * enlarge, width, height)
        centre_x, centre_y = x + w / 2, y + h / 2
    side = max(int(round(side)), 1)
    left = int(round(np.clip(centre_x - side / 2, 0, width - side)))
    top = int(round(np.clip(centre_y - side / 2, 0, height - side)))
    return left, top, left + side, top + side


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as RGB: grayscale, CMYK and palette images converted; transparency laid on white."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image).convert("RGB")
    if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit grayscale: scale to 8 bits
        pixels = np.asarray(image, np.float64)
        return Image.fromarray((pixels / max(pixels.max(), 1) * 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def square_image(image: Image.Image, size: int, box=None) -> np.ndarray:
    """Crop (see `square_crop`), resize to size x size, and return (size, size, 3) uint8."""
    image = to_rgb(image)
    crop = square_crop(*image.size, box=box)
    # BICUBIC in PIL widens its filter when shrinking, so small images do not alias.
    resized = image.resize((size, size), Image.Resampling.BICUBIC, box=crop)
    return np.asarray(resized, np.uint8)


def read_image(path, size: int, box=None) -> np.ndarray:
    """Decode one image file into a (size, size, 3) uint8 array, or raise UnreadableImage."""
    try:
        with Image.open(path) as image:
            original = image.size
            # JPEG can decode at 1/2, 1/4 or 1/8 scale almost for free; ask for
            # no less than twice the output size so the resize still antialiases.
            wanted = max(2 * size, 1)
            if box is not None:
                wanted = int(wanted * max(original) / max(max(box[2:]) * BOX_ENLARGE, 1))
            image.draft("RGB", (wanted, wanted))
            image.load()  # decode now, so a truncated file fails here
            if box is not None and image.size != original:
                scale = image.size[0] / original[0]
                box = tuple(v * scale for v in box)
            return square_image(image, size, box)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UnreadableImage(f"{path}: {error}") from error


def read_images(records, size: int, skipped: Skipped, desc: str = "reading images"):
    """Decode every record's image (on all cores); returns (images (N, S, S, 3) uint8, kept record indices).

    Records whose file is missing or cannot be decoded are left out and counted in `skipped`.
    """
    def read(record):
        try:
            return read_image(record.path, size, record.box), None
        except UnreadableImage as error:
            reason = "missing image file" if not Path(record.path).exists() else "unreadable image file"
            return None, (reason, error)

    images, kept = [], []
    workers = min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # PIL decodes without the GIL
        for i, (image, problem) in enumerate(tqdm(pool.map(read, records), total=len(records), desc=desc, unit="img")):
            if problem is None:
                images.append(image)
                kept.append(i)
            else:
                skipped.add(problem[0], problem[1])
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return stacked, np.asarray(kept, np.int64)


def usable_captions(lines, where, skipped: Skipped) -> tuple[str, ...]:
    """The captions among `lines` that have words; the others (blank, or only punctuation such as
    the "{}" lines of some text_c10 files) are dropped and counted, one by one."""
    kept = []
    for line in lines:
        line = line.strip() if isinstance(line, str) else ""
        if words(line):
            kept.append(line)
        else:
            skipped.add(NO_WORDS, f"{where}: {line!r}")
    return tuple(kept)


def read_caption_file(path, skipped: Skipped) -> tuple[str, ...] | None:
    """The captions of a caption file (one per line, as in Reed et al.'s text_c10).

    Lines with no words are dropped and counted; a missing or unreadable file
    gives None (the flower and bird loaders then make captions from the class
    name), a file with no usable line gives () (the loaders skip its image).
    """
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        skipped.add("missing caption file (class-name captions used)", path)
        return None
    except OSError as error:
        skipped.add("unreadable caption file", f"{path}: {error}")
        return None
    return usable_captions(text.splitlines(), path, skipped)


def captions_for(image, caption_file, made_up, skipped: Skipped) -> tuple[str, ...] | None:
    """An image's captions: those of its caption file (if there is one to read), else the ones
    `made_up()` makes from its class when the file is missing; None, counted, when the file holds no
    caption with words (the loader then skips the image)."""
    captions = read_caption_file(caption_file, skipped) if caption_file is not None else None
    if captions == ():
        skipped.add(NO_USABLE_CAPTION, image)
        return None
    return made_up() if captions is None else captions


def read_dataset(name: str, records, image_size: int, class_names, skipped: Skipped):
    """Decode `records` into a CaptionedImages with a "class" label; report what was skipped."""
    images, kept = read_images(records, image_size, skipped, desc=f"reading {name}")
    skipped.report(name)
    if len(kept) == 0:
        raise ValueError(f"{name}: none of the {len(records)} images could be read (see the problems listed above)")
    kept_records = [records[i] for i in kept]
    return CaptionedImages(
        name=name,
        images=images,
        captions=tuple(r.captions for r in kept_records),
        labels={"class": np.array([r.label for r in kept_records], np.int64)},
        label_names={"class": tuple(class_names)},
        flip_ok=True,
        skipped=skipped.as_dict(),
    )
