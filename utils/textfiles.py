"""Reading the project's text inputs (configs, split lists, class names, track files) with one encoding policy.

UTF-8 only. A UTF-8 byte-order mark (Excel, Notepad) is stripped and reported once per file; UTF-16/32 text,
binary data and invalid UTF-8 are refused with one line naming the file (and the byte offset), so an invisible
U+FEFF never reaches a class name and a raw UnicodeDecodeError never reaches the user.
"""
from __future__ import annotations

import codecs

from utils.errors import UserError
from utils.logger import get_logger

logger = get_logger(__name__)

_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
              (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))
_reported_boms: set[str] = set()


def read_text(path: str, what: str, error: type[UserError]) -> str:
    """The file's text; `what` names the kind of file in messages, `error` is the family to raise."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a {what}") from None
    except OSError as e:
        raise error(f"{path}: cannot read {what} ({e.strerror})") from None
    for bom, name in _WIDE_BOMS:
        if raw.startswith(bom):
            raise error(f"{path}: {what} is {name}-encoded (save it as UTF-8)")
    if b"\x00" in raw:
        raise error(f"{path}: {what} is binary, not text (NUL byte at offset {raw.index(0)})")
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
        if path not in _reported_boms:
            _reported_boms.add(path)
            logger.warning("%s: stripped a UTF-8 byte-order mark from the %s", path, what)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: {what} is not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r}); save it "
                    f"as UTF-8") from None
