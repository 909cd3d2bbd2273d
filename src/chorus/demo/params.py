"""Every number the behaviour model uses, with where it comes from. `chorus demo` prints this table, so nobody
mistakes the simulation's outcome for evidence: where no source is given, the value is an assumption.

Sources are the seed articles (/work/shared/seeds, digested in SEEDS.md) by file:
  [s000] 000_c11c5c7bea3c690c.txt  multi-touchpoint customers ~30 % more valuable; repeat customers ~40 % of revenue
  [s001] 001_9855ea6254e10e43.txt  a first-purchase discount offered to a new sign-up (welcome code)
  [s003] 003_6b655e3f866b4f5c.txt  omnichannel campaigns: ~250 % higher purchase/engagement, ~30 % higher LTV
  [s004] 004_f773d1080fcedb98.txt  87 % of purchases still offline; 39 % visit websites, 33 % compare prices first
A source outside the seeds is named in the source itself, after "assumption: " when the value is still a guess (the
spam complaint rate: Google's email sender guidelines, support.google.com/a/answer/81126, give a ceiling, not a
measured rate).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Param:
    name: str
    value: float
    meaning: str
    source: str  # a seed reference, or "assumption"
    share: bool = True  # a probability in [0, 1]; else a positive amount (a rate, a count, hours, a factor)


ASSUMPTION = "assumption"

PARAMS: tuple[Param, ...] = (
    # -- who the customers are
    Param("existing_share", 0.5, "customers already registered when the period starts", ASSUMPTION),
    Param("store_only_share", 0.25, "customers who never shop online (known by their loyalty card and its email)",
          "[s004] most purchases are offline (87 %)"),
    Param("app_share", 0.45, "customers with the app on their phone", ASSUMPTION),
    Param("loyalty_share", 0.6, "online customers who also hold a loyalty card", ASSUMPTION),
    Param("phone_share", 0.7, "customers who gave a phone number", ASSUMPTION),
    Param("messenger_share", 0.12, "customers who asked for receipts on Messenger", ASSUMPTION),
    Param("sms_preference", 0.15, "customers with a phone (and no Messenger) who asked for receipts by SMS",
          ASSUMPTION),
    Param("catalog_share", 0.5, "loyalty-card holders the printed catalog is mailed to", ASSUMPTION),
    Param("favourite_category_bias", 0.65, "share of browsing in the customer's favourite category", ASSUMPTION),
    # -- how often they come, and when they stop
    Param("visits_per_week", 0.7, "mean shopping missions per customer and week (gamma, shape 2)", ASSUMPTION,
          share=False),
    Param("churn_per_30d", 0.12, "probability that an active customer stops for good within 30 days", ASSUMPTION),
    Param("store_mission_share", 0.40, "missions that are a store visit (else online)",
          "[s004] 87 % of purchases offline, tempered: these customers are online shoppers too"),
    Param("app_session_share", 0.6, "online missions of app users that happen in the app", ASSUMPTION),
    # -- online funnel
    Param("search_rate", 0.5, "online missions that start with a search", "[s004] 33 % compare prices first"),
    Param("add_rate", 0.35, "online missions with product views that add to cart", ASSUMPTION),
    Param("checkout_rate", 0.35, "carts checked out in the same session (else abandoned)", ASSUMPTION),
    Param("cart_return_online", 0.20, "abandoned carts bought later online without any message", ASSUMPTION),
    Param("cart_return_store", 0.12, "abandoned carts bought later in a store (the omnichannel case)",
          "[s004] research online, buy offline"),
    Param("signup_after_sessions", 3, "anonymous missions before a new customer signs up (mean, geometric)",
          ASSUMPTION, share=False),
    Param("pickup_share", 0.2, "online orders collected in a store (click-and-collect)", ASSUMPTION),
    Param("stock_cover", 1.5, "weeks of a product's forecast demand at a store delivered each Monday (its shelf "
          "level; the store cancels a click-and-collect order it cannot pick)",
          "assumption: with forecast_error, 5-15 % of click-and-collect orders are cancelled, around the ~8 % "
          "average out-of-stock rate of retail studies (Gruen, Corsten & Bharadwaj 2002)", share=False),
    Param("forecast_error", 0.5, "spread of the stores' demand forecast error (log-normal sigma, per store and "
          "product)", ASSUMPTION, share=False),
    Param("return_rate_online", 0.15, "online orders returned for a refund (1-14 days later)", ASSUMPTION),
    Param("return_rate_store", 0.05, "till purchases brought back to a store for a refund (1-14 days later)",
          ASSUMPTION),
    Param("promo_code_rate", 0.08, "online orders of catalog recipients that use the catalog's promo code",
          ASSUMPTION),
    # -- crossing channels
    Param("webrooming_rate", 0.2, "view-only online missions followed by a store purchase of that product",
          "[s004] 39 % visit websites before buying"),
    Param("store_purchase_rate", 0.6, "store visits that end with a purchase (else showrooming)", ASSUMPTION),
    Param("showrooming_rate", 0.35, "store visits without a purchase followed by buying online", ASSUMPTION),
    Param("call_rate", 0.03, "missions that are a call to the call centre", ASSUMPTION),
    # -- responses to messages (per message received)
    Param("email_open", 0.25, "email opened", ASSUMPTION),
    Param("email_click", 0.12, "opened email clicked", ASSUMPTION),
    Param("email_unsubscribe", 0.004, "marketing email unsubscribed (RFC 8058 one-click)", ASSUMPTION),
    Param("email_complaint", 0.0005, "marketing email reported as spam (the mailbox provider's feedback loop sends "
          "the brand an ARF report); only an opened, unclicked one, instead of an unsubscribe, never with it",
          "assumption: half the ceiling of Google's email sender guidelines (keep the spam rate below 0.1 %, never "
          "0.3 % or more)"),
    Param("sms_click", 0.10, "SMS link followed", ASSUMPTION),
    Param("sms_stop", 0.01, "marketing SMS answered STOP (opt-out of every SMS)", ASSUMPTION),
    Param("push_open", 0.08, "push notification opened", ASSUMPTION),
    Param("messenger_click", 0.15, "Messenger message acted on", ASSUMPTION),
    Param("relevance_lift", 2.0, "response multiplier when the message is about what the person just did",
          "[s003] omnichannel campaigns ~2.5x engagement, tempered", share=False),
    Param("annoyance_lift", 3.0, "unsubscribe, spam complaint and STOP multiplier for a message about what the "
          "person has already done elsewhere (a cart reminder or browse offer after she bought, a cross-sell after she "
          "bought again, a win-back offer to a recent buyer, a marketing email of a topic she unsubscribed from or "
          "after she reported the brand's email as spam); such a message gets no relevance lift", ASSUMPTION,
          share=False),
    Param("staleness_half_life_h", 48, "hours after which a message's response chance halves", ASSUMPTION,
          share=False),
    Param("convert_after_click", 0.25, "clicks that lead to a purchase within two days", ASSUMPTION),
    Param("convert_in_store", 0.35, "of those purchases, the share made in a store", "[s004] 87 % offline"),
)

_BY_NAME = {p.name: p for p in PARAMS}
DEFAULTS: dict[str, float] = {p.name: p.value for p in PARAMS}


def with_overrides(changes: dict[str, float]) -> dict[str, float]:
    """The defaults with some values changed (`chorus demo --set name=value`, to see what an assumption drives).
    Raises ValueError naming an unknown parameter or a value out of its range."""
    out = dict(DEFAULTS)
    for name, v in changes.items():
        if name not in DEFAULTS:
            raise ValueError(f"--set {name}: no such parameter (see the table `chorus demo` prints)")
        share = _BY_NAME[name].share
        if not (v == v) or v < 0 or (share and v > 1) or (not share and not 0 < v <= 1000) or (
                name == "churn_per_30d" and v >= 1):  # NaN too; a churn of 1 would leave no time at all
            raise ValueError(f"--set {name}={v:g}: out of range")
        out[name] = float(v)
    return out
