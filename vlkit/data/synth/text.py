"""Text in images: words and numbers, bar charts with labeled bars, form-like documents.

Fonts are real TrueType fonts: Debian's DejaVu (`fonts-dejavu-core`) when installed, else Pillow's built-in
TrueType font (`ImageFont.load_default(size=...)`, Pillow >= 10.1). Every font size is fitted so the text
stays inside the image; at 64 x 64 words have at most 6 characters and are drawn as large as they fit.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlkit.data.synth.world import COLORS

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
_FONT_FILES = ["DejaVuSans-Bold.ttf", "DejaVuSans.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf"]

# Short, common words (3-6 letters), no proper names; mixed into lower, Title and UPPER case.
WORDS = """
able acid aged also area army away baby back ball band bank base bath bear beat bell belt best bird
blue boat body bone book boot born both bowl box bread cake call calm camp card care cart case cash cat
cell chair city clay club coal coat code cold cook cool copy corn cost crew crop cup cute dark data date
dawn day deal deep desk diet dish dog door down draw dream dress drop drum duck dust east easy edge egg
exit face fact fair farm fast fear feet field file film find fire fish flag flat flow food foot fork form
fox free frog fruit fuel game gate gift girl glass goal gold good grass green hair half hall hand hat
head heat help hero high hill home hope horse hot house idea iron jazz job join juice jump key kind king
kite lake lamp land last leaf left lemon light lion list long lost loud love lucky mail main map mark
milk mind mint moon more most mouse music name near neck nest news next nice night north note ocean
open orange over page paint park party path peace pearl pen piano pink plan plant play plum poem pond
pool power quick quiet radio rain read rest rice ring river road rock roof room rose round ruby safe
salt sand save sea seed ship shoe shop show side sign silk silver sing sky slow small snow soap sock
soft song soup south space star step stone storm sugar sun swim table tall taxi tea team tent test
tiger time top town toy train tree trip truck tune turn vase view voice wall warm water wave west
whale wheat white wind wine winter wolf wood word work world year yellow zebra zero zone
""".split()

# Dark text on light paper, or light text on dark ground; all pairs have high contrast.
LIGHT_GROUNDS = [(250, 250, 250), (240, 234, 218), (226, 230, 236), (236, 242, 228)]
DARK_INKS = [(10, 10, 10), (20, 30, 110), (120, 20, 20), (20, 80, 30), (60, 60, 60)]
DARK_GROUNDS = [(0, 0, 0), (24, 24, 24), (16, 20, 40), (40, 22, 22)]
LIGHT_INKS = [COLORS["white"], COLORS["yellow"], COLORS["cyan"], COLORS["orange"], (120, 230, 120)]


def font_paths() -> list[Optional[str]]:
    """The TrueType fonts used here: DejaVu files if present, else [None] (Pillow's built-in font)."""
    found = [str(FONT_DIR / f) for f in _FONT_FILES if (FONT_DIR / f).is_file()]
    return found or [None]


_FONTS = font_paths()


@lru_cache(maxsize=1024)
def get_font(path: Optional[str], size: int) -> ImageFont.FreeTypeFont:
    if path is None:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(path, size)


def text_size(text: str, font) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return right - left, bottom - top


@lru_cache(maxsize=65536)
def _ink_size(text: str, path: Optional[str], size: int) -> tuple[int, int]:
    return text_size(text, get_font(path, size))


def fit_font(text: str, path: Optional[str], max_w: float, max_h: float, max_size: int,
             min_size: int = 6) -> ImageFont.FreeTypeFont:
    """The largest font (<= max_size) whose ink box of `text` fits max_w x max_h."""
    w100, h100 = _ink_size(text, path, 100)
    size = int(min(max_size, 100 * max_w / max(w100, 1), 100 * max_h / max(h100, 1)))
    size = max(min_size, size)
    while size > min_size:
        w, h = _ink_size(text, path, size)
        if w <= max_w and h <= max_h:
            break
        size -= 1
    return get_font(path, size)


def text_layer(text: str, font, angle: float = 0.0) -> Image.Image:
    """An "L" image holding just the text's ink (255 = ink), rotated by `angle` degrees, cropped tight."""
    left, top, right, bottom = font.getbbox(text)
    pad = 2
    layer = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(layer).text((pad - left, pad - top), text, font=font, fill=255)
    if angle:
        layer = layer.rotate(angle, resample=Image.BICUBIC, expand=True)
    box = layer.getbbox()
    return layer.crop(box) if box else layer


def _style(rng: np.random.Generator, clean: bool) -> tuple[tuple, tuple, str]:
    """(background, ink, texture): clean is black on white and untextured (for OCR checks)."""
    if clean:
        return (255, 255, 255), (0, 0, 0), "plain"
    if rng.random() < 0.6:
        bg, ink = LIGHT_GROUNDS[int(rng.integers(len(LIGHT_GROUNDS)))], DARK_INKS[int(rng.integers(len(DARK_INKS)))]
    else:
        bg, ink = DARK_GROUNDS[int(rng.integers(len(DARK_GROUNDS)))], LIGHT_INKS[int(rng.integers(len(LIGHT_INKS)))]
    return bg, ink, ("noise" if rng.random() < 0.3 else "plain")


Size = Union[int, tuple[int, int]]  # a square side, or (width, height)


def wh(size: Size) -> tuple[int, int]:
    """(width, height) of a canvas given as a side (square) or as (width, height)."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _ground(size: Size, bg: Sequence[int], texture: str, rng: np.random.Generator) -> Image.Image:
    w, h = wh(size)
    if texture == "noise":
        arr = np.asarray(bg, dtype=np.int16) + rng.integers(-6, 7, size=(h, w, 1), dtype=np.int16)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return Image.new("RGB", (w, h), tuple(bg))


def random_word(rng: np.random.Generator, max_len: int = 6) -> str:
    while True:
        w = WORDS[int(rng.integers(len(WORDS)))]
        if len(w) <= max_len:
            break
    r = rng.random()
    return w.upper() if r < 0.2 else (w.capitalize() if r < 0.5 else w)


def random_number(rng: np.random.Generator, max_digits: int = 4) -> str:
    digits = int(rng.integers(1, max_digits + 1))
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    return str(int(rng.integers(lo, 10 ** digits)))


def render_texts(texts: Sequence[str], size: Size, rng: np.random.Generator, clean: bool = False
                 ) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    """One or more texts, each in its own horizontal band, fitted as large as possible; returns the image
    and each text's tight ink box (pixels, exclusive x2/y2). Non-clean renders vary font, colors,
    texture and rotation (up to 8 degrees, only for a single text). `size`: a side or (width, height)."""
    w, h = wh(size)
    bg, ink, texture = _style(rng, clean)
    img = _ground(size, bg, texture, rng)
    font_path = _FONTS[0] if clean else _FONTS[int(rng.integers(len(_FONTS)))]
    n = len(texts)
    band = h / n
    boxes = []
    for k, text in enumerate(texts):
        angle = 0.0 if (clean or n > 1) else float(rng.uniform(-8, 8))
        max_w, max_h = 0.9 * w, (0.45 * h if n == 1 else 0.7 * band)
        font = fit_font(text, font_path, max_w, max_h, max_size=int(0.5 * min(w, h)))
        layer = text_layer(text, font, angle)
        while (layer.width > 0.94 * w or layer.height > band * 0.94) and font.size > 6:  # rotation grew it
            font = get_font(font_path, font.size - 1)
            layer = text_layer(text, font, angle)
        x_room = max(0, w - layer.width)
        y_room = max(0, int(band) - layer.height)
        x = int(rng.integers(x_room // 4, x_room - x_room // 4 + 1)) if x_room else 0
        y = int(k * band) + (int(rng.integers(y_room // 4, y_room - y_room // 4 + 1)) if y_room else 0)
        img.paste(tuple(ink), (x, y, x + layer.width, y + layer.height), layer)
        boxes.append((x, y, x + layer.width, y + layer.height))
    return img, boxes


def chart_labels(n: int, width: int, rng: np.random.Generator) -> list[str]:
    """Bar labels: consecutive capital letters in narrow charts, short words when there is room."""
    if width < 160:
        start = int(rng.integers(0, 26 - n + 1)) if rng.random() < 0.3 else 0
        return [chr(ord("A") + start + k) for k in range(n)]
    pool = [w for w in WORDS if len(w) <= 4]
    idx = rng.choice(len(pool), size=n, replace=False)
    return [pool[int(i)] for i in idx]


def render_bar_chart(labels: Sequence[str], values: Sequence[int], size: Size, rng: np.random.Generator,
                     clean: bool = False) -> Image.Image:
    """A vertical bar chart: each bar's value printed above it, its label below the axis."""
    w, h = wh(size)
    bg = (255, 255, 255) if clean else LIGHT_GROUNDS[int(rng.integers(len(LIGHT_GROUNDS)))]
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    font_path = _FONTS[0]
    n = len(labels)
    margin = 0.04 * min(w, h)
    slot = (w - 2 * margin) / n
    fs_max = max(7, int(0.15 * min(w, h)))
    widest_label = max(labels, key=lambda t: _ink_size(t, font_path, 100)[0])
    widest_value = max((str(v) for v in values), key=lambda t: _ink_size(t, font_path, 100)[0])
    font = fit_font(widest_label, font_path, 0.95 * slot, fs_max, fs_max)
    vfont = fit_font(widest_value, font_path, 0.95 * slot, fs_max, fs_max)
    line_h = 2 + max(_ink_size("0123456789Ag", font_path, font.size)[1],
                     _ink_size("0123456789", font_path, vfont.size)[1])
    top, bottom = margin + line_h, h - margin - line_h
    axis_y = int(bottom)
    vmax = max(values)
    single = rng.random() < 0.5
    colors = list(COLORS.values())[:-1]  # no white bars on light paper
    base_color = colors[int(rng.integers(len(colors)))]
    for k, (label, value) in enumerate(zip(labels, values)):
        x0 = margin + k * slot + 0.2 * slot
        x1 = margin + (k + 1) * slot - 0.2 * slot
        h = max(1.0, value / vmax * (bottom - top))
        color = base_color if single else colors[int(rng.integers(len(colors)))]
        draw.rectangle((round(x0), round(axis_y - h), round(x1) - 1, axis_y - 1), fill=color)
        cx = (x0 + x1) / 2
        draw.text((cx, axis_y - h - 1), str(value), font=vfont, fill=(0, 0, 0), anchor="md")
        draw.text((cx, axis_y + 2), label, font=font, fill=(0, 0, 0), anchor="ma")
    draw.line((round(margin), axis_y, round(w - margin), axis_y), fill=(60, 60, 60), width=1)
    return img


DOC_FIELDS = {
    "Name": ["Ann", "Bob", "Eva", "Max", "Tom", "Zoe", "Liam", "Mia", "Noah", "Ella", "Omar", "Ravi", "Lea", "Ken"],
    "City": ["Rome", "Oslo", "Lima", "Bern", "Cork", "Nice", "Kyiv", "Pune", "Doha", "Bonn", "Riga", "Baku"],
    "Age": None,  # numbers
    "Room": None,
    "Code": None,  # letter + digits
    "Total": None,
    "Day": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
    "Pet": ["cat", "dog", "fish", "bird", "frog", "duck"],
    "Size": ["S", "M", "L", "XL"],
    "Qty": None,
}


def doc_value(key: str, rng: np.random.Generator) -> str:
    choices = DOC_FIELDS[key]
    if choices is not None:
        return choices[int(rng.integers(len(choices)))]
    if key == "Age":
        return str(int(rng.integers(18, 90)))
    if key == "Room":
        return str(int(rng.integers(100, 999)))
    if key == "Code":
        return chr(ord("A") + int(rng.integers(26))) + str(int(rng.integers(10, 99)))
    if key == "Total":
        return str(int(rng.integers(5, 500)))
    return str(int(rng.integers(1, 20)))  # Qty


def render_document(pairs: Sequence[tuple[str, str]], size: Size, rng: np.random.Generator,
                    clean: bool = False) -> Image.Image:
    """A form: one `Key: value` line per field, left-aligned on light paper, with a thin frame."""
    w, h = wh(size)
    bg = (255, 255, 255) if clean else LIGHT_GROUNDS[int(rng.integers(len(LIGHT_GROUNDS)))]
    ink = (0, 0, 0) if clean else DARK_INKS[int(rng.integers(len(DARK_INKS)))]
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    font_path = _FONTS[0] if clean else _FONTS[int(rng.integers(len(_FONTS)))]
    lines = [f"{k}: {v}" for k, v in pairs]
    margin = max(2, round(0.05 * min(w, h)))
    band = (h - 2 * margin) / len(lines)
    widest = max(lines, key=lambda t: _ink_size(t, font_path, 100)[0])
    font = fit_font(widest, font_path, w - 2 * margin - 2, 0.62 * band, int(0.3 * min(w, h)))
    if not clean:
        draw.rectangle((0, 0, w - 1, h - 1), outline=(150, 150, 150))
    for k, line in enumerate(lines):
        y = margin + (k + 0.5) * band
        draw.text((margin + 1, y), line, font=font, fill=ink, anchor="lm")
    return img
