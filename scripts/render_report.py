"""Screenshot a report.html with headless Chromium and check that it rendered.

Usage: .venv/bin/python scripts/render_report.py REPORT.html OUT.png [--width 1280]
           [--height 2400] [--max-kb 400]

Chromium draws the page into a --width x --height window; the screenshot's empty bottom is
cropped, and it is shrunk (palette, then smaller) until it is at most --max-kb. The check fails
(exit status 1) when the PNG is missing, smaller than 10 KB, or nearly one colour (a blank page).
Chromium comes from Debian: `apt-get install -y chromium`.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
MIN_BYTES = 10_000
MIN_COLOURS = 50


def screenshot(page: Path, png: Path, width: int, height: int) -> None:
    """Run headless Chromium once; it writes ``png``."""
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        sys.exit("render_report: no Chromium found; install it: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   "--disable-background-networking", f"--user-data-dir={profile}",
                   f"--window-size={width},{height}", f"--screenshot={png}",
                   page.resolve().as_uri()]
        subprocess.run(command, check=True, timeout=180, capture_output=True)


def crop_bottom(image: Image.Image, margin: int = 24) -> Image.Image:
    """Cut the rows at the bottom that are all one colour (the page ended above them)."""
    pixels = np.asarray(image.convert("RGB"))
    last_row = pixels[-1]
    busy = np.nonzero((pixels != last_row).any(axis=(1, 2)))[0]
    bottom = min(len(pixels), int(busy[-1]) + margin) if len(busy) else len(pixels)
    return image.crop((0, 0, image.width, bottom))


def shrink(image: Image.Image, max_bytes: int) -> bytes:
    """PNG bytes at most ``max_bytes``: a 256-colour palette first, then scaled down by 0.85."""
    image = image.convert("RGB")
    while True:
        buffer = io.BytesIO()
        image.quantize(256).save(buffer, format="PNG", optimize=True)
        if buffer.tell() <= max_bytes or image.width < 400:
            return buffer.getvalue()
        image = image.resize((int(image.width * 0.85), int(image.height * 0.85)),
                             Image.LANCZOS)


def check(png: Path) -> str:
    """A line describing the PNG, or SystemExit when it did not render."""
    if not png.is_file():
        sys.exit(f"render_report: {png} was not written")
    size = png.stat().st_size
    pixels = np.asarray(Image.open(png).convert("RGB"))
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    if size < MIN_BYTES or colours < MIN_COLOURS:
        sys.exit(f"render_report: {png} looks blank ({size} bytes, {colours} colours)")
    return f"{png}: {pixels.shape[1]}x{pixels.shape[0]}, {size // 1024} KB, {colours} colours"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="the report.html to render")
    parser.add_argument("out", type=Path, help="where to write the PNG")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2400)
    parser.add_argument("--max-kb", type=int, default=400, help="shrink the PNG to this size")
    args = parser.parse_args(argv)
    if not args.page.is_file():
        sys.exit(f"render_report: {args.page} not found; build it with `unlearnlm report RUN_DIR`")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        raw = Path(folder) / "page.png"
        screenshot(args.page, raw, args.width, args.height)
        if not raw.is_file():
            sys.exit("render_report: Chromium wrote no screenshot")
        image = crop_bottom(Image.open(raw))
        args.out.write_bytes(shrink(image, args.max_kb * 1024))
    print(check(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
