"""The recovery key as a QR code, for a paper backup: terminal rendering and an SVG file.

Pure presentation over the `qrcode` library (pure Python; its SVG factory
needs no Pillow). Callers: `cli` (init, key add recovery). Imports nothing of
the project.
"""

from __future__ import annotations

import os

import qrcode
import qrcode.image.svg

QUIET_ZONE = 4  # modules of light border the QR standard asks for; scanners fail without it
_DARK = "\x1b[40m  "  # explicit colours, so the code reads the same on light and dark terminals
_LIGHT = "\x1b[47m  "
_RESET = "\x1b[0m"


def _code(text: str, border: int) -> qrcode.QRCode:
    # Level M (15 % of the code may be damaged): a printed sheet gets folded and smudged.
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=border)
    code.add_data(text)
    code.make(fit=True)
    return code


def matrix(text: str) -> list[list[bool]]:
    """The QR modules of ``text`` (True = dark), without the quiet zone."""
    return [list(row) for row in _code(text, 0).get_matrix()]


def terminal(text: str) -> str:
    """ANSI text drawing the QR code (two columns per module), quiet zone included."""
    rows = _code(text, QUIET_ZONE).get_matrix()
    return "".join("".join(_DARK if dark else _LIGHT for dark in row) + _RESET + "\n" for row in rows)


def write_svg(text: str, path: str) -> None:
    """Write the QR code as SVG to a new file, mode 0600 (it is the recovery key); never overwrites."""
    image = _code(text, QUIET_ZONE).make_image(image_factory=qrcode.image.svg.SvgPathImage)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        image.save(f)
