"""The demo brand as data: a home-and-outdoor retailer with a web shop, an app, physical stores with loyalty cards,
and the messaging channels the seeds name (SEEDS.md: email, SMS, push, Messenger, call centre, printed catalog).

Nothing here does I/O; the behaviour model (``model.py``) draws from it and the runner (``run.py``) sends it.
Prices are integer minor units (cents): money is never a float in Chorus' reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    category: str
    price_cents: int

    @property
    def price(self) -> Decimal:
        return Decimal(self.price_cents) / 100


@dataclass(frozen=True)
class Store:
    id: str
    city: str


@dataclass(frozen=True)
class Brand:
    name: str
    domain: str
    currency: str
    region: str  # phone numbers without "+" are read in this region (the workspace's default_region)
    timezone: str  # where customers live: sessions happen in this zone's daytime
    catalog: tuple[Product, ...]
    stores: tuple[Store, ...]
    # touchpoints the customers use (the events' context.channel), and the channels the brand sends on
    touchpoints: tuple[str, ...]
    message_channels: tuple[str, ...]
    catalog_promo_codes: tuple[str, ...]  # printed in the catalog mailing; typed at the web checkout

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.category for p in self.catalog))

    def in_category(self, category: str) -> tuple[Product, ...]:
        return tuple(p for p in self.catalog if p.category == category)

    def product(self, sku: str) -> Product:
        for p in self.catalog:
            if p.sku == sku:
                return p
        raise KeyError(sku)


def _products() -> tuple[Product, ...]:
    rows = {
        "tents": [("Trailhead 2P tent", 18900), ("Basecamp 4P tent", 34900), ("Ultralight 1P tent", 27900)],
        "sleeping": [("Down sleeping bag -5C", 21900), ("Summer sleeping bag", 6900), ("Self-inflating mat", 5900)],
        "footwear": [("Ridge hiking boots", 15900), ("Trail runners", 11900), ("Camp sandals", 4900)],
        "jackets": [("Storm shell jacket", 22900), ("Fleece midlayer", 6900), ("Insulated parka", 27900)],
        "kitchen": [("Cast iron skillet", 4900), ("Chef's knife", 8900), ("Espresso maker", 3900)],
        "garden": [("Folding garden chair", 5900), ("Solar lanterns (4)", 2900), ("Teak bench", 39900)],
        "bikes": [("City e-bike", 189900), ("Gravel bike", 129900), ("Bike lock", 4900)],
        "lighting": [("Head torch", 3900), ("Camping lantern", 2900), ("Desk lamp", 6900)],
    }
    out = []
    for category, items in rows.items():
        for i, (name, cents) in enumerate(items, 1):
            out.append(Product(f"{category[:3].upper()}-{i:03d}", name, category, cents))
    return tuple(out)


BRAND = Brand(
    name="Kestrel Outdoor & Home",
    domain="kestrel.example",
    currency="EUR",
    region="NL",
    timezone="Europe/Amsterdam",
    catalog=_products(),
    stores=(Store("AMS-01", "Amsterdam"), Store("RTM-01", "Rotterdam"), Store("UTR-01", "Utrecht"),
            Store("GRQ-01", "Groningen"), Store("EIN-01", "Eindhoven")),  # fmt: skip
    touchpoints=("web", "app", "store", "email", "sms", "push", "messenger", "call_center", "catalog"),
    message_channels=("email", "sms", "push", "messenger"),
    catalog_promo_codes=("SPRING-CAT", "OUTDOOR-CAT"),
)
