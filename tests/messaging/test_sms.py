"""SMS segment counting: exact carrier boundaries, and properties over any text."""

import math

from hypothesis import given
from hypothesis import strategies as st

from chorus.messaging.sms import GSM7_BASIC, GSM7_EXTENSION, SegmentInfo, is_gsm7, segments

GSM_CHARS = sorted(GSM7_BASIC | GSM7_EXTENSION)
gsm_text = st.text(alphabet=GSM_CHARS, max_size=1200)
non_gsm_char = st.characters(codec="utf-8").filter(lambda c: c not in GSM7_BASIC and c not in GSM7_EXTENSION)


def test_empty_text_is_nothing_to_send():
    assert segments("") == SegmentInfo("GSM-7", 0, 0, 160)


def test_gsm7_single_and_multipart_boundaries():
    assert segments("a" * 160) == SegmentInfo("GSM-7", 1, 160, 160)
    assert segments("a" * 161) == SegmentInfo("GSM-7", 2, 161, 153)
    assert segments("a" * 153 * 2).segments == 2
    assert segments("a" * (153 * 2 + 1)).segments == 3
    assert segments("a" * 1530).segments == 10
    assert segments("a" * 1531).segments == 11


def test_ucs2_single_and_multipart_boundaries():
    assert segments("я" * 70) == SegmentInfo("UCS-2", 1, 70, 70)
    assert segments("я" * 71) == SegmentInfo("UCS-2", 2, 71, 67)
    assert segments("я" * 67 * 2).segments == 2
    assert segments("я" * (67 * 2 + 1)).segments == 3


def test_extension_characters_count_two_septets():
    assert segments("€") == SegmentInfo("GSM-7", 1, 2, 160)
    assert segments("a" * 158 + "€").segments == 1  # 160 septets
    assert segments("a" * 159 + "€").segments == 2  # 161 septets
    assert segments("{}[]~|^\\\f€").characters == 20
    # 81 euro signs: 162 septets; a 153-septet part holds only 76 whole escape pairs.
    assert segments("€" * 81) == SegmentInfo("GSM-7", 2, 162, 153)


def test_extension_escape_never_split_across_parts():
    # 306 septets would fit two parts of 153, but the € cannot straddle the first boundary.
    text = "a" * 152 + "€" + "a" * 152
    info = segments(text)
    assert info.characters == 306
    assert info.segments == 3


def test_surrogate_pair_counts_two_and_is_never_split():
    assert segments("😀" * 35) == SegmentInfo("UCS-2", 1, 70, 70)
    assert segments("😀" * 36) == SegmentInfo("UCS-2", 2, 72, 67)
    text = "я" * 66 + "😀" + "я" * 66  # 134 code units, but the emoji starts the second part
    assert segments(text).characters == 134
    assert segments(text).segments == 3


def test_accents_in_and_out_of_the_gsm_alphabet():
    assert segments("Café à Zürich, Ñoño").encoding == "GSM-7"
    assert segments("Ñandú").encoding == "UCS-2"  # ú is not in the GSM alphabet
    assert segments("ça va").encoding == "UCS-2"  # GSM has Ç but not ç
    assert segments("`").encoding == "UCS-2"
    assert not is_gsm7("naïve")


@given(gsm_text)
def test_gsm_only_text_never_reports_ucs2(text):
    assert segments(text).encoding == "GSM-7"


@given(gsm_text, non_gsm_char, st.integers(min_value=0))
def test_a_single_non_gsm_character_switches_to_ucs2(text, char, at):
    at = at % (len(text) + 1)
    assert segments(text[:at] + char + text[at:]).encoding == "UCS-2"


@given(st.text(max_size=800), st.text(min_size=1, max_size=5))
def test_segment_count_is_monotone_in_length(text, more):
    assert segments(text).segments <= segments(text + more).segments
    for i in range(0, len(text), 37):
        assert segments(text[:i]).segments <= segments(text).segments


@given(st.text(max_size=1500))
def test_counts_are_consistent(text):
    info = segments(text)
    units = [2 if (c in GSM7_EXTENSION if info.encoding == "GSM-7" else ord(c) > 0xFFFF) else 1 for c in text]
    assert info.characters == sum(units)
    if info.segments > 1:
        assert info.per_segment in (153, 67)
        # Whole characters packed greedily: at least ceil(units / capacity), at most one unit lost per part.
        assert math.ceil(info.characters / info.per_segment) <= info.segments
        assert (info.segments - 1) * (info.per_segment - 1) < info.characters
    else:
        assert info.characters <= info.per_segment
