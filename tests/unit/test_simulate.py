"""The synthetic-user simulator: seeded, well-formed events, tastes that follow catalogue labels."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from atelier.catalogue import read_catalogue_csv
from atelier.simulate import (
    EVENT_KINDS,
    PARAMETER_DOCS,
    SimulatorParams,
    parameter_table,
    simulate,
    write_csv,
)

PARAMS = SimulatorParams(n_users=150, seed=3)


@pytest.fixture(scope="module")
def items(tiny_csv):
    return read_catalogue_csv(tiny_csv)


@pytest.fixture(scope="module")
def simulation(items):
    return simulate(items, PARAMS)


def test_same_seed_same_events_other_seed_other_events(items, simulation):
    assert simulate(items, PARAMS).events == simulation.events
    assert simulate(items, replace(PARAMS, seed=4)).events != simulation.events


def test_events_are_well_formed(items, simulation):
    known = {item.item_id for item in items}
    per_user: dict[str, list] = defaultdict(list)
    for event in simulation.events:
        assert event.item_id in known
        assert event.kind in EVENT_KINDS
        per_user[event.user_id].append(event)
    assert len(per_user) == PARAMS.n_users
    for events in per_user.values():
        times = [e.timestamp for e in events]
        assert times == sorted(times)
        distinct = {e.item_id for e in events}
        assert len(distinct) >= PARAMS.min_items
        # The funnel: an item is viewed before anything else, and each stage at most once.
        by_item: dict[str, list[str]] = defaultdict(list)
        for e in events:
            by_item[e.item_id].append(e.kind)
        for kinds in by_item.values():
            assert kinds == list(EVENT_KINDS[: len(kinds)])


def test_tastes_follow_the_anchor_article_types(items, simulation):
    row = {item.item_id: i for i, item in enumerate(items)}
    type_share = Counter(item.article_type for item in items)
    liked = chance = 0.0
    total = 0
    views = defaultdict(list)
    for e in simulation.events:
        if e.kind == "view":
            views[e.user_id].append(row[e.item_id])
    for user in simulation.users:
        types = {items[a].article_type for a in user.anchors}
        for r in views[user.user_id]:
            liked += items[r].article_type in types
            total += 1
        chance += sum(type_share[t] for t in types) / len(items) * len(views[user.user_id])
    assert liked / total > 0.6
    assert liked / total > 3 * chance / total


def test_users_mostly_get_items_of_their_gender(items, simulation):
    row = {item.item_id: i for i, item in enumerate(items)}
    gender = {u.user_id: u.gender for u in simulation.users}
    fits = [
        items[row[e.item_id]].gender in (gender[e.user_id], "Unisex")
        for e in simulation.events
        if e.kind == "view"
    ]
    # 300 items run out of matching ones of the right gender; the full catalogue gives 0.93.
    assert np.mean(fits) > 0.75


def test_images_are_never_read(tmp_path, items):
    moved = [replace(item, image_path=tmp_path / "missing.jpg") for item in items]
    assert simulate(moved, PARAMS).events == simulate(items, PARAMS).events


def test_csv_has_the_importer_columns(tmp_path: Path, simulation):
    path = tmp_path / "events.csv"
    rows = write_csv(simulation.events[:20], path)
    with path.open(newline="") as handle:
        read = list(csv.DictReader(handle))
    assert rows == 20 and len(read) == 20
    assert list(read[0]) == ["user_id", "item_id", "timestamp", "kind"]
    assert float(read[0]["timestamp"]) == pytest.approx(simulation.events[0].timestamp)


def test_every_parameter_is_documented():
    names = [name for name, _, _ in parameter_table(SimulatorParams())]
    assert names == list(PARAMETER_DOCS)
