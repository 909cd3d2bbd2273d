"""From a profile to the row an ad platform receives: plain functions over a profile view.

A *row* is a flat ``{key: value}`` dict of what is sent for one person, values already normalised and hashed
(``EMAIL``, ``PHONE``, ``FN``... for Meta; ``hashedEmail``, ``hashedPhoneNumber``, ``hashedFirstName``... for
Google). Its *fingerprint* (SHA-256 of the sorted row) is what the sync compares with the last synced rows, so a
person whose email changed is removed under the old row and added under the new one.

An audience says which *identifier kinds* it sends:

| kind | Meta keys | Google fields |
|---|---|---|
| ``email`` | ``EMAIL`` | ``hashedEmail`` |
| ``phone`` | ``PHONE`` | ``hashedPhoneNumber`` |
| ``name`` | ``FN``, ``LN`` | (part of ``address``) |
| ``address`` | ``CT``, ``ST``, ``ZIP``, ``COUNTRY`` | ``addressInfo``: first and last name, country, zip (all four) |
| ``gender`` | ``GEN`` | — |
| ``birthdate`` | ``DOBY``, ``DOBM``, ``DOBD`` | — |
| ``external_id`` | ``EXTERN_ID`` (the user id, not hashed) | — |

Where the values come from: ``email`` and ``phone`` from the profile's identifiers (the ``email``/``phone``
trait when it is one of them, else the first); names, address, gender and birth date from traits (Segment's
``firstName``/``first_name``..., ``address {city, state, postalCode, country}`` or flat ``city``, ``zip``...);
the country from the ``country`` trait, else from the phone number's country.
"""

from __future__ import annotations

import orjson

from chorus.messaging.audiences import normalise as n

FORMATS = ("meta", "google")
# What a profile gives as a row: bump it whenever build_row, facts or the normalisation changes a row, so that
# following audiences take a full pass (an incremental one keeps the rows of unchanged people as they were sent).
VERSION = 1
KINDS = {
    "meta": ("email", "phone", "name", "address", "gender", "birthdate", "external_id"),
    "google": ("email", "phone", "address"),
}
DEFAULT_KINDS = ["email", "phone"]

META_SCHEMA = ("EMAIL", "PHONE", "FN", "LN", "CT", "ST", "ZIP", "COUNTRY", "GEN", "DOBY", "DOBM", "DOBD", "EXTERN_ID")
META_UNHASHED = frozenset({"EXTERN_ID", "MADID"})
GOOGLE_KEYS = ("hashedEmail", "hashedPhoneNumber", "hashedFirstName", "hashedLastName", "countryCode", "postalCode")
GOOGLE_UNHASHED = frozenset({"countryCode", "postalCode"})

# Customer-file CSV columns: (row key, header), in the order the platforms document them.
META_CSV = (
    ("EMAIL", "email"), ("PHONE", "phone"), ("FN", "fn"), ("LN", "ln"), ("CT", "ct"), ("ST", "st"), ("ZIP", "zip"),
    ("COUNTRY", "country"), ("DOBY", "doby"), ("GEN", "gen"), ("EXTERN_ID", "extern_id"),
)  # fmt: skip
GOOGLE_CSV = (
    ("hashedEmail", "Email"), ("hashedPhoneNumber", "Phone"), ("hashedFirstName", "First Name"),
    ("hashedLastName", "Last Name"), ("countryCode", "Country"), ("postalCode", "Zip"),
)  # fmt: skip
KIND_KEYS = {
    "meta": {
        "email": ("EMAIL",), "phone": ("PHONE",), "name": ("FN", "LN"), "address": ("CT", "ST", "ZIP", "COUNTRY"),
        "gender": ("GEN",), "birthdate": ("DOBY", "DOBM", "DOBD"), "external_id": ("EXTERN_ID",),
    },
    "google": {
        "email": ("hashedEmail",), "phone": ("hashedPhoneNumber",),
        "address": ("hashedFirstName", "hashedLastName", "countryCode", "postalCode"),
    },
}  # fmt: skip

TRAITS = {
    "first_name": ("first_name", "firstName", "firstname", "given_name", "givenName"),
    "last_name": ("last_name", "lastName", "lastname", "family_name", "familyName", "surname"),
    "city": ("city",),
    "state": ("state", "region", "province"),
    "zip": ("zip", "postal_code", "postalCode", "zipcode", "zip_code", "postcode"),
    "country": ("country", "country_code", "countryCode"),
    "gender": ("gender", "sex"),
    "birthdate": ("birthday", "birthdate", "birth_date", "date_of_birth", "dob"),
}


def _trait(traits: dict, fact: str):
    address = traits.get("address") if isinstance(traits.get("address"), dict) else {}
    for name in TRAITS[fact]:
        for source in (traits, address):
            value = source.get(name)
            if value not in (None, ""):
                return value
    return None


def _primary(values: list[str], preferred: str | None) -> str | None:
    if not values:
        return None
    return preferred if preferred in values else values[0]


def facts(profile: dict, region: str | None) -> dict:
    """The raw values of a profile that audiences can use (not yet normalised for a platform)."""
    idents = profile.get("identifiers") or {}
    traits = profile.get("traits") or {}
    trait_email = traits.get("email")
    email = _primary(
        list(idents.get("email") or []), trait_email.strip().lower() if isinstance(trait_email, str) else None
    )
    trait_phone = traits.get("phone")
    phone = _primary(
        list(idents.get("phone") or []),
        n.e164(str(trait_phone), region) if isinstance(trait_phone, str | int) else None,
    )
    first, last = _trait(traits, "first_name"), _trait(traits, "last_name")
    if first is None and last is None and isinstance(traits.get("name"), str) and " " in traits["name"].strip():
        first, last = traits["name"].strip().split(None, 1)
    country = n.country(_trait(traits, "country")) or n.country_of_phone(phone)
    user_ids = idents.get("user_id") or []
    return {
        "email": email, "phone": phone, "first_name": first, "last_name": last, "city": _trait(traits, "city"),
        "state": _trait(traits, "state"), "zip": _trait(traits, "zip"), "country": country,
        "gender": _trait(traits, "gender"), "birthdate": _trait(traits, "birthdate"),
        "external_id": str(user_ids[0]) if user_ids else None,
    }  # fmt: skip


def _hashed(values: dict, unhashed: frozenset) -> dict:
    return {k: (v if k in unhashed else n.sha256_hex(v)) for k, v in values.items() if v}


def meta_values(f: dict, kinds: list[str], region: str | None) -> dict:
    """Normalised, not yet hashed, Meta values of a profile's facts."""
    out: dict[str, str | None] = {}
    if "email" in kinds:
        out["EMAIL"] = n.meta_email(f["email"])
    if "phone" in kinds:
        out["PHONE"] = n.meta_phone(f["phone"], region)
    if "name" in kinds:
        out["FN"], out["LN"] = n.meta_name(f["first_name"]), n.meta_name(f["last_name"])
    if "address" in kinds:
        out["CT"] = n.meta_city(f["city"])
        out["ST"] = n.meta_state(f["state"], f["country"])
        out["ZIP"] = n.meta_zip(f["zip"], f["country"])
        out["COUNTRY"] = n.meta_country(f["country"])
    if "gender" in kinds:
        out["GEN"] = n.meta_gender(f["gender"])
    if "birthdate" in kinds and (born := n.birth_date(f["birthdate"])):
        out["DOBY"], out["DOBM"], out["DOBD"] = born
    if "external_id" in kinds and f["external_id"]:
        out["EXTERN_ID"] = f["external_id"].strip() or None
    return {k: v for k, v in out.items() if v}


def google_values(f: dict, kinds: list[str], region: str | None) -> dict:
    out: dict[str, str | None] = {}
    if "email" in kinds:
        out["hashedEmail"] = n.google_email(f["email"])
    if "phone" in kinds:
        out["hashedPhoneNumber"] = n.google_phone(f["phone"], region)
    if "address" in kinds:
        address = {
            "hashedFirstName": n.google_first_name(f["first_name"]),
            "hashedLastName": n.google_last_name(f["last_name"]),
            "countryCode": f["country"],
            "postalCode": n.google_postal_code(f["zip"], f["country"]),
        }
        if all(address.values()):  # Google needs all four, or the address is not an identifier
            out.update(address)
    return {k: v for k, v in out.items() if v}


def usable(fmt: str, row: dict) -> bool:
    """Does the row identify someone? Meta: email, phone, external id, or first and last name with a zip code or
    city; Google: an email, a phone or a complete address."""
    if fmt == "google":
        return bool(row)
    if row.get("EMAIL") or row.get("PHONE") or row.get("EXTERN_ID"):
        return True
    return bool(row.get("FN") and row.get("LN") and (row.get("ZIP") or row.get("CT")))


def build_row(fmt: str, profile: dict, kinds: list[str], region: str | None) -> dict | None:
    """The hashed row for a profile, or None when it has no identifier the audience sends."""
    f = facts(profile, region)
    if fmt == "meta":
        row = _hashed(meta_values(f, kinds, region), META_UNHASHED)
    else:
        row = _hashed(google_values(f, kinds, region), GOOGLE_UNHASHED)
    return row if usable(fmt, row) else None


def fingerprint(row: dict) -> str:
    return n.sha256_hex(orjson.dumps(row, option=orjson.OPT_SORT_KEYS).decode())


def csv_columns(fmt: str, kinds: list[str]) -> list[tuple[str, str]]:
    wanted = {k for kind in kinds for k in KIND_KEYS[fmt].get(kind, ())}
    return [(key, header) for key, header in (META_CSV if fmt == "meta" else GOOGLE_CSV) if key in wanted]
