"""Images the app shows, drawn straight to PNG bytes with Pillow (no plotting library in a
query's path): the 12-lead ECG on ECG paper, and candidate thumbnails.

A matplotlib figure of the 12 leads took 0.2-0.5 s per admission on the 2-core machine;
this drawing takes milliseconds, and is drawn once per admission (app.web.admissions).
"""

from __future__ import annotations

import base64
import functools
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from preprocessing.layout import CANONICAL_ECG_LEADS

WIDTH, HEIGHT = 1100, 640
LEFT, RIGHT, TOP, BOTTOM = 64, 10, 8, 34  # margins (px): lead labels left of each column
TRACE = (0, 0, 0)
GRID_MINOR, GRID_MAJOR = (250, 222, 222), (232, 160, 160)


def png_bytes(image: Image.Image) -> bytes:
    """An image as PNG bytes (fast compression: these are drawn per request)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def thumbnail_png(thumbnail: np.ndarray) -> bytes:
    """A uint8 [T, T] thumbnail (0 = black) as grayscale PNG bytes."""
    return png_bytes(Image.fromarray(np.ascontiguousarray(thumbnail, dtype=np.uint8), "L"))


def png_data_uri(png: bytes) -> str:
    """PNG bytes as a data: URI, which the page carries inline (no request per image)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail_data_uri(thumbnail: np.ndarray) -> str:
    """A uint8 [T, T] thumbnail as a grayscale PNG data: URI."""
    return png_data_uri(thumbnail_png(thumbnail))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without a scalable default font
        return ImageFont.load_default()


# Palette entries: a 4-colour image encodes several times faster than RGB.
WHITE, BLACK, MINOR, MAJOR, GREY = range(5)
PALETTE = [255, 255, 255, *TRACE, *GRID_MINOR, *GRID_MAJOR, 90, 90, 90]


def _layout(n_leads: int) -> tuple[int, float, float]:
    """(rows per column, panel width, panel height) of the 2-column grid (px)."""
    rows = -(-n_leads // 2)
    return rows, (WIDTH - 2 * LEFT - RIGHT) / 2, (HEIGHT - TOP - BOTTOM) / rows


@functools.lru_cache(maxsize=8)
def _paper(n_leads: int, seconds: float) -> Image.Image:
    """The ECG paper with grid, seconds and lead names: drawn once per shape, copied per
    ECG (the traces are all that differs between admissions)."""
    image = Image.new("P", (WIDTH, HEIGHT), WHITE)
    image.putpalette(PALETTE)
    draw = ImageDraw.Draw(image)
    small, label = _font(11), _font(13)
    rows, panel_w, panel_h = _layout(n_leads)
    for column in range(2):
        x0 = LEFT + column * (panel_w + LEFT)
        for tick in np.arange(0, seconds + 1e-9, 0.2):
            x = x0 + tick / seconds * panel_w
            major = abs(tick - round(tick)) < 1e-6
            draw.line([(x, TOP), (x, HEIGHT - BOTTOM)], fill=MAJOR if major else MINOR)
            if major and round(tick) % 2 == 0:
                draw.text((x, HEIGHT - BOTTOM + 4), f"{tick:.0f}", fill=BLACK, font=small)
        draw.text((x0 + panel_w / 2 - 20, HEIGHT - 16), "time (s)", fill=BLACK, font=small)
        for row in range(rows):
            lead = column * rows + row
            if lead >= n_leads:
                break
            y0 = TOP + row * panel_h
            draw.line([(x0, y0 + panel_h), (x0 + panel_w, y0 + panel_h)], fill=MAJOR)
            name = CANONICAL_ECG_LEADS[lead] if lead < len(CANONICAL_ECG_LEADS) else str(lead)
            draw.text((x0 - LEFT + 6, y0 + 4), name, fill=BLACK, font=label)
    return image


def envelope(signal: np.ndarray, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """(x [P] in samples, traces [leads, P]): each lead reduced to its minimum and maximum
    in each of `columns` pixel columns (in the order the trace passes them), which draws
    the same picture as every sample at a fraction of the points; unchanged when there are
    fewer than two samples per column."""
    n_samples = signal.shape[1]
    if n_samples < 2 * max(columns, 1):
        return np.arange(n_samples, dtype=np.float32), signal
    starts = np.linspace(0, n_samples, columns, endpoint=False).astype(np.int64)
    ends = np.append(starts[1:], n_samples) - 1
    low = np.minimum.reduceat(signal, starts, axis=1)
    high = np.maximum.reduceat(signal, starts, axis=1)
    rising = signal[:, starts] <= signal[:, ends]  # low first where the trace goes up
    first, second = np.where(rising, low, high), np.where(rising, high, low)
    traces = np.stack([first, second], axis=2).reshape(len(signal), 2 * columns)
    x = np.stack([starts, ends], axis=1).ravel().astype(np.float32)
    return x, traces


def ecg_png(signal: np.ndarray, fs: float, unit: str) -> bytes:
    """The 12 leads [12, T] as a 6 x 2 grid on ECG paper, PNG bytes.

    Leads are labelled on the left with the lead name and the span of its vertical axis
    (each lead scaled to its own panel, in `unit`); seconds below; the grid has minor
    lines every 0.2 s and major lines every 1 s.
    """
    signal = np.nan_to_num(np.asarray(signal, np.float32))
    n_leads, n_samples = signal.shape
    image = _paper(n_leads, round(n_samples / fs, 6)).copy()
    draw = ImageDraw.Draw(image)
    small = _font(11)
    rows, panel_w, panel_h = _layout(n_leads)
    low, high = signal.min(axis=1), signal.max(axis=1)
    span = np.maximum(high - low, 1e-6)
    x_of, trace = envelope(signal, int(panel_w))
    x_of = x_of * (panel_w / max(n_samples - 1, 1))
    for lead in range(n_leads):
        column, row = divmod(lead, rows)
        x0, y0 = LEFT + column * (panel_w + LEFT), TOP + row * panel_h
        y = y0 + panel_h * 0.06 + (high[lead] - trace[lead]) / span[lead] * panel_h * 0.88
        draw.line(np.stack([x0 + x_of, y], axis=1).ravel().tolist(), fill=BLACK)
        draw.text((x0 - LEFT + 6, y0 + 20), f"{span[lead]:.2g} {unit}", fill=GREY, font=small)
    return png_bytes(image)
