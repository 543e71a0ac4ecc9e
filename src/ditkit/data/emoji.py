"""The emoji dataset: Noto Color Emoji glyphs rendered on white, captioned with their Unicode names.

Every single-code-point emoji that Debian's `fonts-noto-color-emoji` draws becomes one image
(64x64 by default) and one caption, its Unicode character name in lower case ("red apple",
"rocket"), read from Python's `unicodedata`. Left out: flags and ZWJ sequences (several code
points; unicodedata names single characters only), and the pieces they are built from
(regional indicator letters, skin-tone modifiers, hair components, the keycap mark), which are
not emoji on their own. A code point the font has no glyph for renders nothing and is skipped,
as is one this Python's Unicode database has no name for (Python 3.11 knows Unicode 14.0, so
the Emoji 15.0 glyphs of font 2.042 are left out).

Rendering: Noto Color Emoji is a CBDT bitmap font with one strike, 109 ppem, whose glyphs are
136x128 pixel bitmaps; FreeType only draws it at that size. So each glyph is drawn at full size,
centered in a 136x136 square, composited on white, then shrunk with Lanczos to the target size
(glyphs keep the size the font gives them: a "small orange diamond" stays small).

The held-out split is a deterministic choice of names independent of any RNG's implementation:
the `heldout` names with the smallest SHA-256 of their caption. Adding a new emoji never moves
an old name from the training side to the held-out side unless its hash is among the smallest.

This module renders, names and splits; writing a dataset folder atomically is the caller's job
(`ditkit data emoji` wraps write_emoji_dataset in core.files.atomic_folder).
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_PACKAGE = "fonts-noto-color-emoji"
FONT_PATH = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FONT_SIZE = 109  # the font's only bitmap strike (CBDT); FreeType refuses other sizes for it
CELL = 136  # a glyph bitmap is 136 wide, 128 tall at that strike: drawn centered in a 136x136 square
SIZE = 64
HELDOUT = 50
MANIFEST = "emoji.json"
TRAIN_DIR, HELDOUT_DIR = "train", "heldout"

# The Unicode blocks that hold single-code-point emoji (Unicode's emoji-data.txt lists its
# emoji in these); everything else the font maps is a sequence component (tags, keycap digits).
EMOJI_RANGES = ((0x00A9, 0x00A9), (0x00AE, 0x00AE), (0x2000, 0x2BFF), (0x3030, 0x3030), (0x303D, 0x303D),
                (0x3297, 0x3297), (0x3299, 0x3299), (0x1F000, 0x1FAFF))
# Code points that only build other emoji: flag letters, skin tones, hair styles.
_COMPONENT_PREFIXES = ("REGIONAL INDICATOR SYMBOL", "EMOJI MODIFIER", "EMOJI COMPONENT")
_NOT_SYMBOLS = ("Mn", "Me", "Cf", "Cc", "Zs", "Zl", "Zp")  # combining marks (the keycap), format/space chars


@dataclass(frozen=True)
class Emoji:
    """One emoji: its code point and caption (the lower-case Unicode name)."""
    codepoint: int
    name: str

    @property
    def char(self) -> str:
        return chr(self.codepoint)

    @property
    def stem(self) -> str:
        """The file name without extension: the caption with spaces as '-' ("red-apple")."""
        return self.name.replace(" ", "-")

    @property
    def label(self) -> str:
        return f"U+{self.codepoint:04X}"


def font_missing_message(path: Path = FONT_PATH) -> str:
    return (f"the emoji font {path} is missing; install Debian's {FONT_PACKAGE} package "
            f"(apt-get install -y {FONT_PACKAGE}, or `make emoji-font`)")


def load_font(path: str | Path = FONT_PATH) -> ImageFont.FreeTypeFont:
    """Noto Color Emoji at its bitmap strike. FileNotFoundError naming the package when absent.
    The basic layout engine draws one code point as one glyph: no shaping is needed for single
    characters, and raqm refuses some control characters the scan meets."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(font_missing_message(path))
    return ImageFont.truetype(str(path), FONT_SIZE, layout_engine=ImageFont.Layout.BASIC)


def emoji_name(codepoint: int) -> str | None:
    """The caption of a single-code-point emoji ("red apple"), or None for a code point that is
    not one on its own (no Unicode name, a combining or format character, a component)."""
    ch = chr(codepoint)
    name = unicodedata.name(ch, None)
    if name is None or unicodedata.category(ch) in _NOT_SYMBOLS or name.startswith(_COMPONENT_PREFIXES):
        return None
    return name.lower()


def candidate_codepoints() -> list[int]:
    return [cp for lo, hi in EMOJI_RANGES for cp in range(lo, hi + 1)]


def draw_glyph(font: ImageFont.FreeTypeFont, codepoint: int) -> Image.Image | None:
    """The glyph at full size, RGBA (CELL, CELL) on transparent; None when the font draws nothing."""
    canvas = Image.new("RGBA", (CELL, CELL), (0, 0, 0, 0))
    # the 128-pixel-tall bitmap sits at the top of its line box; (0, 4) centers it in the square
    ImageDraw.Draw(canvas).text((0, (CELL - 128) // 2), chr(codepoint), font=font, embedded_color=True)
    return canvas if canvas.getbbox() is not None else None


def render_emoji(font: ImageFont.FreeTypeFont, codepoint: int, size: int = SIZE) -> Image.Image | None:
    """An RGB (size, size) image of the emoji on white, or None when the font has no glyph for it."""
    if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= CELL:
        raise ValueError(f"emoji size must be an integer in 8..{CELL} (the glyphs are {CELL} px), got {size!r}")
    glyph = draw_glyph(font, codepoint)
    if glyph is None:
        return None
    # composite before resizing: Lanczos on the white image has no dark fringe from transparent pixels
    on_white = Image.alpha_composite(Image.new("RGBA", glyph.size, (255, 255, 255, 255)), glyph).convert("RGB")
    image = on_white.resize((size, size), Image.LANCZOS)
    if np.asarray(image).min() == 255:  # a glyph too faint to survive the resize: an all-white image
        return None
    return image


def render_all(font: ImageFont.FreeTypeFont, size: int = SIZE,
               codepoints: Iterable[int] | None = None) -> list[tuple[Emoji, Image.Image]]:
    """Every emoji among `codepoints` (default: candidate_codepoints()) that has a name and a
    glyph, with its image, sorted by name. ValueError if two names map to one file name."""
    found: dict[str, tuple[Emoji, Image.Image]] = {}
    for cp in (candidate_codepoints() if codepoints is None else codepoints):
        name = emoji_name(cp)
        if name is None:
            continue
        image = render_emoji(font, cp, size)
        if image is None:
            continue
        emoji = Emoji(cp, name)
        if emoji.stem in found:
            raise ValueError(f"{found[emoji.stem][0].label} and {emoji.label} both give the file name {emoji.stem!r}")
        found[emoji.stem] = (emoji, image)
    return [found[k] for k in sorted(found)]


def heldout_names(names: Sequence[str], n: int = HELDOUT) -> list[str]:
    """The n held-out captions: those with the smallest SHA-256 (ties impossible in practice;
    broken by the name), sorted by name. Needs at least one name left for training."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"the held-out count must be an integer >= 0, got {n!r}")
    if n >= len(names):
        raise ValueError(f"cannot hold out {n} of {len(names)} emoji: at least one must stay for training")
    ranked = sorted(names, key=lambda s: (hashlib.sha256(s.encode("utf-8")).hexdigest(), s))
    return sorted(ranked[:n])


def write_emoji_dataset(folder: str | Path, items: Sequence[tuple[Emoji, Image.Image]], heldout: int = HELDOUT,
                        font_path: str | Path = FONT_PATH) -> dict:
    """Write FOLDER/train/NAME.png + NAME.txt, FOLDER/heldout/... (empty for heldout 0) and the manifest
    FOLDER/emoji.json; `folder` must not exist (the caller makes the whole folder atomic).
    Returns the manifest."""
    folder = Path(folder)
    held = set(heldout_names([e.name for e, _ in items], heldout))
    folder.mkdir()
    splits: dict[str, list[dict]] = {TRAIN_DIR: [], HELDOUT_DIR: []}
    for split in splits:
        (folder / split).mkdir()
    for emoji, image in items:
        split = HELDOUT_DIR if emoji.name in held else TRAIN_DIR
        image.save(folder / split / f"{emoji.stem}.png")
        (folder / split / f"{emoji.stem}.txt").write_text(emoji.name, encoding="utf-8")
        splits[split].append({"name": emoji.name, "codepoint": emoji.label, "file": f"{split}/{emoji.stem}.png"})
    size = items[0][1].size[0] if items else SIZE
    manifest = {"font": str(font_path), "font_package": FONT_PACKAGE, "font_sha256": _sha256(Path(font_path)),
                "unicode_version": unicodedata.unidata_version, "size": size, "count": len(items),
                "heldout_rule": f"the {heldout} captions with the smallest SHA-256",
                "train": splits[TRAIN_DIR], "heldout": splits[HELDOUT_DIR]}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


@dataclass(frozen=True)
class EmojiSplit:
    """One split read back: captions (N,) and uint8 images (N, S, S, 3), sorted by file name."""
    names: list[str]
    images: np.ndarray


def read_split(folder: str | Path) -> EmojiSplit:
    """The NAME.png + NAME.txt pairs directly in `folder` (a train/ or heldout/ folder).
    ValueError for a missing folder, no pairs, a PNG without its caption, or mixed sizes."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"emoji folder {str(folder)!r} does not exist")
    names, images = [], []
    for png in sorted(folder.glob("*.png")):
        txt = png.with_suffix(".txt")
        if not txt.is_file():
            raise ValueError(f"{png} has no caption file {txt.name}")
        names.append(txt.read_text(encoding="utf-8").strip())
        with Image.open(png) as im:
            images.append(np.asarray(im.convert("RGB")))
    if not images:
        raise ValueError(f"no NAME.png + NAME.txt pairs in {folder}")
    if len({im.shape for im in images}) > 1:
        raise ValueError(f"the images in {folder} differ in size; expected one size (as `ditkit data emoji` writes)")
    return EmojiSplit(names, np.stack(images))
