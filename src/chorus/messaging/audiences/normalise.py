"""Normalising and hashing customer data the way each ad platform matches it: plain functions, no I/O.

Both platforms compare the SHA-256 (lower-case hex) of a *normalised* value with their own, so a value that is
normalised differently never matches. Every function here is idempotent (normalising twice changes nothing)
and returns ``None`` for a value that cannot be used, never a guess.

**Meta** (Marketing API, Custom Audiences, multi-key schema):

- ``EMAIL``: trim, lower case.
- ``PHONE``: digits only with the country code: no ``+``, no leading zeros (``+31 6 1234 5678`` → ``31612345678``).
  Chorus parses numbers with ``phonenumbers`` and the workspace's default region first, so national formats
  (``06-12345678`` in the Netherlands) get their country code.
- ``FN``/``LN``: lower case, no punctuation, UTF-8 (accents are kept: ``Valéry`` → ``valéry``).
- ``CT``: lower case, letters and digits only (no spaces or punctuation).
- ``ST``: the 2-letter ANSI code in lower case for US states (full names are mapped), else lower case letters only.
- ``ZIP``: lower case, no spaces or dashes; US: the first 5 digits.
- ``COUNTRY``: ISO 3166-1 alpha-2, lower case.
- ``GEN``: ``m`` or ``f``. ``DOBY`` ``YYYY``, ``DOBM`` ``MM``, ``DOBD`` ``DD``.
- ``EXTERN_ID`` (and ``MADID``) are sent as they are, not hashed.

**Google** (Google Ads API Customer Match, ``UserIdentifier``):

- ``hashed_email``: trim, lower case; for ``gmail.com`` and ``googlemail.com`` the dots before the ``@`` are
  removed (Google's rule for Gmail addresses, which ignore dots).
- ``hashed_phone_number``: E.164 *with* the ``+`` (``+31612345678``).
- ``address_info.hashed_first_name``: lower case, extra spaces removed; ``hashed_last_name``: lower case, no
  punctuation. ``country_code`` (ISO alpha-2, upper case) and ``postal_code`` are sent in clear.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import lru_cache

import phonenumbers

_HEX64 = re.compile(r"[0-9a-f]{64}")
_SPACES = re.compile(r"\s+")

US_STATES = {
    "alabama": "al", "alaska": "ak", "arizona": "az", "arkansas": "ar", "california": "ca", "colorado": "co",
    "connecticut": "ct", "delaware": "de", "districtofcolumbia": "dc", "florida": "fl", "georgia": "ga",
    "hawaii": "hi", "idaho": "id", "illinois": "il", "indiana": "in", "iowa": "ia", "kansas": "ks",
    "kentucky": "ky", "louisiana": "la", "maine": "me", "maryland": "md", "massachusetts": "ma", "michigan": "mi",
    "minnesota": "mn", "mississippi": "ms", "missouri": "mo", "montana": "mt", "nebraska": "ne", "nevada": "nv",
    "newhampshire": "nh", "newjersey": "nj", "newmexico": "nm", "newyork": "ny", "northcarolina": "nc",
    "northdakota": "nd", "ohio": "oh", "oklahoma": "ok", "oregon": "or", "pennsylvania": "pa", "rhodeisland": "ri",
    "southcarolina": "sc", "southdakota": "sd", "tennessee": "tn", "texas": "tx", "utah": "ut", "vermont": "vt",
    "virginia": "va", "washington": "wa", "westvirginia": "wv", "wisconsin": "wi", "wyoming": "wy",
    "puertorico": "pr", "guam": "gu", "virginislands": "vi", "americansamoa": "as", "northernmarianaislands": "mp",
}  # fmt: skip


def sha256_hex(value: str) -> str:
    """Lower-case hex SHA-256 of the UTF-8 bytes: what both platforms expect."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def is_sha256_hex(value: object) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def _text(value: object) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        return None
    value = unicodedata.normalize("NFC", value).strip()
    return value or None


def _without_punctuation(text: str) -> str:
    """Drop punctuation and symbols (Unicode categories P* and S*), keep letters, marks, digits and spaces."""
    return "".join(ch for ch in text if not unicodedata.category(ch).startswith(("P", "S")))


def _letters_digits(text: str) -> str:
    return "".join(ch for ch in text if unicodedata.category(ch).startswith(("L", "M", "N")))


# -- shared ------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=100_000)
def e164(raw: str, region: str | None) -> str | None:
    """``+<country code><number>``, parsed with the workspace's default region for national formats.

    Idempotent: an E.164 number parses to itself whatever the region.
    """
    text = _text(raw)
    if text is None:
        return None
    try:
        num = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(num):
        return None
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


def country(raw: object) -> str | None:
    """An ISO 3166-1 alpha-2 code (upper case) that phonenumbers knows, else None (names are not guessed)."""
    text = _text(raw)
    if text is None:
        return None
    code = text.upper()
    if code == "UK":  # the common non-ISO spelling of GB
        code = "GB"
    return code if len(code) == 2 and code in phonenumbers.SUPPORTED_REGIONS else None


def country_of_phone(number: str | None) -> str | None:
    if not number:
        return None
    try:
        region = phonenumbers.region_code_for_number(phonenumbers.parse(number, None))
    except phonenumbers.NumberParseException:
        return None
    return region if region and region != "ZZ" else None


# -- Meta ---------------------------------------------------------------------------------------------------------
def meta_email(raw: object) -> str | None:
    text = _text(raw)
    if text is None or "@" not in text:
        return None
    return text.lower()


def meta_phone_digits(value: object) -> str | None:
    """Digits only, no leading zeros: the last step of Meta's phone rule (idempotent on its own)."""
    text = _text(value)
    if text is None:
        return None
    digits = "".join(ch for ch in text if ch.isdigit()).lstrip("0")
    return digits if len(digits) >= 7 else None


def meta_phone(raw: object, region: str | None) -> str | None:
    """E.164 first (so a national number gets its country code), then digits only."""
    text = _text(raw)
    if text is None:
        return None
    number = e164(text, region)
    return meta_phone_digits(number) if number else None


def meta_name(raw: object) -> str | None:
    text = _text(raw)
    if text is None:
        return None
    out = _SPACES.sub(" ", _without_punctuation(text.lower())).strip()
    return out or None


def meta_city(raw: object) -> str | None:
    text = _text(raw)
    if text is None:
        return None
    return _letters_digits(text.lower()) or None


def meta_state(raw: object, country_code: str | None = None) -> str | None:
    text = _text(raw)
    if text is None:
        return None
    out = _letters_digits(text.lower())
    if not out:
        return None
    if country_code in (None, "US") and out in US_STATES:
        return US_STATES[out]
    return out


def meta_zip(raw: object, country_code: str | None = None) -> str | None:
    text = _text(raw)
    if text is None:
        return None
    out = re.sub(r"[\s\-]", "", text.lower())
    if country_code == "US":
        digits = re.match(r"\d{5}", out)
        return digits.group(0) if digits else None
    return out or None


def meta_country(raw: object) -> str | None:
    code = country(raw)
    return code.lower() if code else None


def meta_gender(raw: object) -> str | None:
    text = _text(raw)
    if text is None:
        return None
    return {"m": "m", "male": "m", "man": "m", "f": "f", "female": "f", "woman": "f"}.get(text.lower())


def birth_date(raw: object) -> tuple[str, str, str] | None:
    """(YYYY, MM, DD) from an ISO date or timestamp (``1990-05-07``, ``1990-05-07T00:00:00Z``), else None."""
    text = _text(raw)
    if text is None:
        return None
    m = re.fullmatch(r"(\d{4})-(\d{1,2})-(\d{1,2})(?:[T ].*)?", text)
    if not m:
        return None
    year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not (1900 <= year <= 2100 and 1 <= month <= 12 and 1 <= day <= 31):
        return None
    return f"{year:04d}", f"{month:02d}", f"{day:02d}"


# -- Google -------------------------------------------------------------------------------------------------------
GMAIL_DOMAINS = ("gmail.com", "googlemail.com")


def google_email(raw: object) -> str | None:
    text = _text(raw)
    if text is None or "@" not in text:
        return None
    local, _, domain = text.lower().rpartition("@")
    if domain in GMAIL_DOMAINS:
        local = local.replace(".", "")
    if not local or not domain:
        return None
    return f"{local}@{domain}"


def google_phone(raw: object, region: str | None) -> str | None:
    text = _text(raw)
    return e164(text, region) if text else None


def google_first_name(raw: object) -> str | None:
    text = _text(raw)
    if text is None:
        return None
    return _SPACES.sub(" ", text.lower()).strip() or None


def google_last_name(raw: object) -> str | None:
    return meta_name(raw)  # lower case, no punctuation: the same rule


def google_postal_code(raw: object, country_code: str | None = None) -> str | None:
    text = _text(raw)
    if text is None:
        return None
    out = _SPACES.sub(" ", text.upper()).strip()
    if country_code == "US":
        digits = re.match(r"\d{5}", out)
        return digits.group(0) if digits else None
    return out or None
