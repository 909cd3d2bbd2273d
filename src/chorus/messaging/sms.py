"""SMS length: which encoding a text needs and how many segments a carrier bills for it.

A text goes out as GSM-7 when every character is in the GSM 03.38 default alphabet or its extension table,
otherwise as UCS-2. A single message holds 160 septets (GSM-7) or 70 UTF-16 code units (UCS-2); a longer one is
split into parts that each give up room to the concatenation header: 153 septets or 67 code units per part.

Extension characters (``^{}\\[~]|€`` and form feed) are sent as an escape plus a septet, so they count 2, and
an astral character (an emoji) is a surrogate pair in UCS-2, so it counts 2. Neither pair may be cut across two
parts, so the split packs whole characters greedily: a part can end one unit short, which is why the segment
count is not simply ``ceil(units / 153)``.
"""

from __future__ import annotations

from dataclasses import dataclass

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
"""The GSM 03.38 default alphabet (127 characters: the 128 code points less the escape to the extension)."""

GSM7_EXTENSION = frozenset("\f^{}\\[]~|€")
"""Characters of the GSM 03.38 extension table: each costs an escape septet plus its own."""

GSM7_SINGLE, GSM7_MULTIPART = 160, 153
UCS2_SINGLE, UCS2_MULTIPART = 70, 67


@dataclass(frozen=True)
class SegmentInfo:
    """How a text is billed.

    ``characters`` is the length in the encoding's units (septets for GSM-7, so ``€`` counts 2; UTF-16 code
    units for UCS-2, so an emoji counts 2), which is what the limits below are written in. ``per_segment`` is
    the capacity that applies: 160/70 for a single message, 153/67 for each part of a longer one.
    """

    encoding: str
    segments: int
    characters: int
    per_segment: int


def is_gsm7(text: str) -> bool:
    """True when the whole text can be sent in the GSM-7 alphabet (basic set plus extension table)."""
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text)


def _units(text: str, gsm: bool) -> list[int]:
    if gsm:
        return [2 if ch in GSM7_EXTENSION else 1 for ch in text]
    return [2 if ord(ch) > 0xFFFF else 1 for ch in text]


def segments(text: str) -> SegmentInfo:
    """Count the segments of ``text`` (an empty text is 0 segments: there is nothing to send)."""
    gsm = is_gsm7(text)
    encoding = "GSM-7" if gsm else "UCS-2"
    single, multipart = (GSM7_SINGLE, GSM7_MULTIPART) if gsm else (UCS2_SINGLE, UCS2_MULTIPART)
    units = _units(text, gsm)
    total = sum(units)
    if total <= single:
        return SegmentInfo(encoding, 1 if total else 0, total, single)
    count, used = 1, 0
    for width in units:
        if used + width > multipart:  # never split an escape pair or a surrogate pair
            count, used = count + 1, 0
        used += width
    return SegmentInfo(encoding, count, total, multipart)
