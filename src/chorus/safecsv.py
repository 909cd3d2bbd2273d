"""CSV cells a spreadsheet will not run: what Chorus writes for people to open (a segment's members, analytics
tables) holds text its users' customers typed (a user id, a campaign name), and a cell that starts with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return is a formula to Excel, LibreOffice and Google Sheets (CSV injection:
``=HYPERLINK(...)``, ``=cmd|...``). Such a cell is written with a leading apostrophe, as OWASP recommends; a number
(``-3.5``, a phone number in E.164, ``+31612345678``) is left as it is, since a spreadsheet reads it as a number.
Files for machines (an ad platform's customer list) are not passed through this: their formats are fixed."""

from __future__ import annotations

import re

_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


def cell(value):
    """``value`` as a CSV cell no spreadsheet evaluates (text only; other values are returned as they are)."""
    if isinstance(value, str) and value.startswith(_TRIGGERS) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value
