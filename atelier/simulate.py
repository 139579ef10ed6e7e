"""A seeded simulator of shoppers whose tastes live in catalogue attributes, never in the codes (synthetic data).

No real interaction log with images is available offline, so personalisation is trained and
evaluated on simulated users. Their tastes are written over the catalogue's labels (articleType,
baseColour, gender, usage, season): a model that ranks them well from the VAE codes has learnt
from the images what the labels say, which is what a visually-aware ranker must do on real logs.

How a user is drawn (every number is a field of `SimulatorParams`):

- a gender: Men or Women (a share of Boys/Girls shoppers too); items of another gender are
  penalised by `gender_weight` (Unisex items suit everyone);
- one to `max_clusters` taste clusters, each anchored on a catalogue item drawn by popularity
  among the items that suit the user; a cluster likes the anchor's articleType, baseColour,
  usage and season with weights `type_weight`, `colour_weight`, `usage_weight`, `season_weight`,
  plus a second colour drawn from the catalogue (liked at half weight);
- every item has an intrinsic appeal (log-normal, spread `popularity_sigma`) that every user
  shares with weight `popularity_weight`: the popularity bias;
- a user makes `min_items` + NegBin(mean `mean_extra_items`) distinct item interactions; each
  picks a cluster by the user's cluster weights (Dirichlet), then an item by softmax over the
  catalogue of the cluster's utility divided by `temperature`; with probability `noise` the item
  is instead drawn by appeal alone, from the whole catalogue;
- interactions are spread over time: a user starts at a uniform time within `span_days` and
  comes back after exponential gaps (mean `mean_gap_hours`); every interaction is a view, and
  becomes a click, a cart and a purchase with the funnel's probabilities, seconds to minutes apart.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np

from atelier.catalogue import CatalogueItem

EVENT_KINDS = ("view", "click", "cart", "purchase")
ADULT_GENDERS = ("Men", "Women")
CHILD_GENDERS = ("Boys", "Girls")


@dataclass(frozen=True)
class SimulatorParams:
    """Every knob of the simulator; `PARAMETER_DOCS` says what each one means."""

    n_users: int = 5000
    seed: int = 0
    max_clusters: int = 3
    cluster_concentration: float = 1.0
    child_share: float = 0.05
    gender_weight: float = 4.0
    type_weight: float = 6.0
    colour_weight: float = 2.5
    usage_weight: float = 1.0
    season_weight: float = 0.5
    popularity_sigma: float = 1.0
    popularity_weight: float = 0.7
    temperature: float = 1.0
    noise: float = 0.1
    min_items: int = 4
    mean_extra_items: float = 10.0
    extra_items_dispersion: float = 2.0
    span_days: float = 90.0
    mean_gap_hours: float = 30.0
    click_probability: float = 0.5
    cart_probability: float = 0.3
    purchase_probability: float = 0.5
    start_time: float = 1_767_225_600.0  # 2026-01-01T00:00:00Z

    def to_dict(self) -> dict:
        return asdict(self)


PARAMETER_DOCS: dict[str, str] = {
    "n_users": "simulated users",
    "seed": "seed of every random draw; the same seed and catalogue give the same events",
    "max_clusters": "a user has 1 to this many taste clusters (uniform)",
    "cluster_concentration": "Dirichlet concentration of a user's weights over their clusters",
    "child_share": "share of users who shop for Boys or Girls instead of Men or Women",
    "gender_weight": "utility lost by an item whose gender does not suit the user (Unisex suits all)",
    "type_weight": "utility of the cluster's articleType",
    "colour_weight": "utility of the cluster's baseColour (its second colour gets half)",
    "usage_weight": "utility of the cluster's usage (Casual, Formal, Sports, ...)",
    "season_weight": "utility of the cluster's season",
    "popularity_sigma": "spread of the items' log-normal appeal",
    "popularity_weight": "weight of log appeal in every user's utility: the popularity bias",
    "temperature": "softmax temperature over utilities (higher: noisier choices)",
    "noise": "probability that an interaction ignores taste and follows appeal alone",
    "min_items": "fewest distinct items a user interacts with",
    "mean_extra_items": "mean of the negative-binomial number of items beyond min_items",
    "extra_items_dispersion": "negative-binomial dispersion of that number (smaller: heavier tail)",
    "span_days": "users' first visits are uniform over this many days",
    "mean_gap_hours": "mean exponential gap between a user's interactions",
    "click_probability": "probability that a view becomes a click",
    "cart_probability": "probability that a click becomes a cart addition",
    "purchase_probability": "probability that a cart addition becomes a purchase",
    "start_time": "Unix time of the simulation's start",
}


class Interaction(NamedTuple):
    user_id: str
    item_id: str
    timestamp: float
    kind: str


@dataclass(frozen=True)
class SimulatedUser:
    """A user's hidden taste, kept so that tests and reports can check what the models recover."""

    user_id: str
    gender: str
    anchors: tuple[int, ...]  # catalogue rows anchoring each cluster
    cluster_weights: tuple[float, ...]


@dataclass(frozen=True)
class Simulation:
    params: SimulatorParams
    users: list[SimulatedUser]
    events: list[Interaction]
    appeal: np.ndarray  # (n_items,) log appeal of each catalogue item


def _codes(values: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    names = sorted(set(values))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[v] for v in values], dtype=np.int64), names


def simulate(items: Sequence[CatalogueItem], params: SimulatorParams | None = None) -> Simulation:
    """Draw users and their interactions over `items` (labels are read, images never are)."""
    params = params or SimulatorParams()
    if not items:
        raise ValueError("cannot simulate users over an empty catalogue")
    rng = np.random.default_rng(params.seed)
    n = len(items)
    article, _ = _codes([i.article_type for i in items])
    colour, colour_names = _codes([i.colour for i in items])
    usage, _ = _codes([i.usage for i in items])
    season, _ = _codes([i.season for i in items])
    gender = np.array([i.gender for i in items])
    appeal = rng.normal(0.0, params.popularity_sigma, n)
    base = params.popularity_weight * appeal
    suits = {
        g: (gender == g) | (gender == "Unisex") | (gender == "")
        for g in ADULT_GENDERS + CHILD_GENDERS
    }

    # Inverse-CDF draws: one cumulative sum per cluster instead of one per interaction.
    noise_cdf = np.cumsum(np.exp(base - base.max()))
    users: list[SimulatedUser] = []
    events: list[Interaction] = []
    width = len(str(params.n_users - 1))
    for u in range(params.n_users):
        user_id = f"sim-{u:0{width}d}"
        pool = CHILD_GENDERS if rng.random() < params.child_share else ADULT_GENDERS
        user_gender = str(rng.choice(pool))
        if not suits[user_gender].any():
            user_gender = str(rng.choice(ADULT_GENDERS))
        fits = suits[user_gender]
        shared = base - params.gender_weight * ~fits
        # Anchors are drawn by appeal among suitable items: popular styles attract more users.
        anchor_p = np.where(fits, np.exp(appeal), 0.0)
        if anchor_p.sum() == 0:
            anchor_p = np.exp(appeal)
        anchor_p /= anchor_p.sum()
        n_clusters = int(rng.integers(1, params.max_clusters + 1))
        anchors = rng.choice(n, size=n_clusters, p=anchor_p)
        weights = rng.dirichlet(np.full(n_clusters, params.cluster_concentration))
        cluster_cdf = []
        for a in anchors:
            second = rng.integers(len(colour_names))
            utility = (
                shared
                + params.type_weight * (article == article[a])
                + params.colour_weight * (colour == colour[a])
                + 0.5 * params.colour_weight * ((colour == second) & (colour != colour[a]))
                + params.usage_weight * (usage == usage[a])
                + params.season_weight * (season == season[a])
            )
            logits = utility / params.temperature
            cluster_cdf.append(np.cumsum(np.exp(logits - logits.max())))

        extra = rng.negative_binomial(
            params.extra_items_dispersion,
            params.extra_items_dispersion
            / (params.extra_items_dispersion + params.mean_extra_items),
        )
        wanted = min(params.min_items + int(extra), n)
        chosen: list[int] = []
        seen: set[int] = set()
        for _ in range(wanted * 20):  # distinct items; the cap only matters for tiny catalogues
            if len(chosen) == wanted:
                break
            if rng.random() < params.noise:
                cdf = noise_cdf
            else:
                cdf = cluster_cdf[rng.choice(n_clusters, p=weights)]
            row = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), n - 1)
            if row not in seen:
                seen.add(row)
                chosen.append(row)

        t = params.start_time + rng.uniform(0, params.span_days * 86400.0)
        for row in chosen:
            t += rng.exponential(params.mean_gap_hours * 3600.0)
            events.extend(_funnel(user_id, items[row].item_id, t, params, rng))
            t = events[-1].timestamp  # the next item comes after this one's funnel
        users.append(
            SimulatedUser(
                user_id, user_gender, tuple(int(a) for a in anchors), tuple(map(float, weights))
            )
        )
    return Simulation(params, users, events, appeal.astype(np.float32))


def _funnel(
    user_id: str, item_id: str, t: float, params: SimulatorParams, rng: np.random.Generator
) -> list[Interaction]:
    out = [Interaction(user_id, item_id, round(t, 3), "view")]
    for kind, p in zip(
        EVENT_KINDS[1:],
        (params.click_probability, params.cart_probability, params.purchase_probability),
        strict=True,
    ):
        if rng.random() >= p:
            break
        t += rng.exponential(120.0)
        out.append(Interaction(user_id, item_id, round(t, 3), kind))
    return out


def write_csv(events: Iterable[Interaction], path: Path) -> int:
    """Events in the importer's CSV form, `user_id,item_id,timestamp,kind`; returns the row count."""
    rows = 0
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "timestamp", "kind"])
        for event in events:
            writer.writerow([event.user_id, event.item_id, f"{event.timestamp:.3f}", event.kind])
            rows += 1
    return rows


def parameter_table(params: SimulatorParams) -> list[tuple[str, object, str]]:
    """(name, value, meaning) for every parameter, in declaration order."""
    values = params.to_dict()
    return [(f.name, values[f.name], PARAMETER_DOCS[f.name]) for f in fields(params)]
