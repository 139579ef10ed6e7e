"""Interaction events and CSV rows: what is refused and why, timestamps, and the "for you" top-k."""

from __future__ import annotations

import numpy as np
import pytest

from atelier.foryou import top_k
from atelier.interactions import (
    MAX_CLOCK_SKEW_SECONDS,
    Event,
    Row,
    csv_event_id,
    iter_rows,
    parse_timestamp,
    problem,
    read_header,
)
from atelier.personal_jobs import JobState, check_kind, state_of

NOW = 1_790_000_000.0


def _event(**changes) -> Event:
    fields = {
        "event_id": "e1",
        "user_id": "u1",
        "item_id": "1532",
        "kind": "click",
        "timestamp": NOW - 60,
    }
    return Event(**{**fields, **changes})


def test_a_good_event_has_no_problem():
    assert problem(_event(), NOW) is None
    # a client clock a little ahead of ours is tolerated
    assert problem(_event(timestamp=NOW + MAX_CLOCK_SKEW_SECONDS - 1), NOW) is None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"event_id": ""}, "event_id is empty"),
        ({"user_id": "  "}, "user_id is empty"),
        ({"item_id": ""}, "item_id is empty"),
        ({"user_id": "u" * 257}, "user_id is longer than 256"),
        ({"item_id": "a\x00b"}, "item_id contains a NUL"),
        ({"kind": ""}, "kind is missing"),
        ({"kind": "like"}, "unknown kind 'like'"),
        ({"timestamp": NOW + 3600}, "in the future"),
        ({"timestamp": 0.0}, "positive number of seconds"),
        ({"timestamp": -5.0}, "positive number of seconds"),
        ({"timestamp": float("nan")}, "positive number of seconds"),
        ({"timestamp": float("inf")}, "positive number of seconds"),
    ],
)
def test_bad_events_are_refused_with_a_reason(changes, reason):
    assert reason in problem(_event(**changes), NOW)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1700000000", 1_700_000_000.0),
        (" 1700000000.25 ", 1_700_000_000.25),
        ("2023-11-14T22:13:20Z", 1_700_000_000.0),
        ("2023-11-14T22:13:20", 1_700_000_000.0),  # no zone: UTC
        ("2023-11-15T00:13:20+02:00", 1_700_000_000.0),
    ],
)
def test_timestamps_are_unix_seconds_or_iso_8601(text, expected):
    assert parse_timestamp(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "yesterday", "2023-13-45"])
def test_unparseable_timestamps_are_refused(text):
    with pytest.raises(ValueError, match="timestamp"):
        parse_timestamp(text)


def test_csv_rows_are_parsed_or_refused_per_line(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(
        "user_id,item_id,timestamp,kind\n"
        "u1,1532,1700000000,purchase\n"
        "u2,1533,2023-11-14T22:13:20Z,\n"  # no kind: a view
        "u3,,1700000000,view\n"
        "u4,1534,soon,view\n"
        "u5,1535,1700000000,like\n"
        "u6,1536\n"
        "\n"
        "u7,1537,1700000000,CLICK\n"
    )
    rows = list(iter_rows(path))
    assert [(r.line, r.reason == "") for r in rows] == [
        (2, True),
        (3, True),
        (4, False),
        (5, False),
        (6, False),
        (7, False),
        (9, True),
    ]
    assert (rows[0].user_id, rows[0].item_id, rows[0].kind) == ("u1", "1532", "purchase")
    assert rows[1].kind == "view" and rows[1].timestamp == pytest.approx(1_700_000_000.0)
    assert "item_id is empty" in rows[2].reason
    assert "timestamp" in rows[3].reason
    assert "unknown kind" in rows[4].reason
    assert "expected at least 3 fields" in rows[5].reason
    assert rows[6].kind == "click"
    # resuming at a line skips what came before it
    assert [r.line for r in iter_rows(path, start_line=6)] == [6, 7, 9]


def test_columns_follow_the_header_and_kind_is_optional(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("timestamp,item_id,user_id\n1700000000,1532,u1\n")
    assert read_header(path) == {"user_id": 2, "item_id": 1, "timestamp": 0}
    (row,) = iter_rows(path)
    assert (row.user_id, row.item_id, row.kind) == ("u1", "1532", "view")


def test_a_header_without_the_required_columns_is_refused(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user,item,when\nu1,1532,1700000000\n")
    with pytest.raises(ValueError, match="line 1: the header lacks user_id, item_id, timestamp"):
        read_header(path)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="the file is empty"):
        read_header(empty)


def test_csv_event_ids_depend_on_what_a_row_says_not_where_it_stands():
    row = Row(7, "u1", "100", "click", 1_700_000_000.0)
    assert csv_event_id(row) == csv_event_id(Row(90, "u1", "100", "click", 1_700_000_000.0))
    for other in (
        Row(7, "u2", "100", "click", 1_700_000_000.0),
        Row(7, "u1", "101", "click", 1_700_000_000.0),
        Row(7, "u1", "100", "cart", 1_700_000_000.0),
        Row(7, "u1", "100", "click", 1_700_000_000.5),
    ):
        assert csv_event_id(other) != csv_event_id(row)


def test_top_k_matches_a_full_sort_with_ties_broken_by_row():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, size=500).astype(np.float64)  # many ties
    pool = np.sort(rng.choice(500, size=200, replace=False))
    for k in (1, 5, 37, 200, 500):
        rows, values = top_k(scores, pool, k)
        expected = sorted(pool.tolist(), key=lambda r: (-scores[r], r))[:k]
        assert rows.tolist() == expected
        assert values.tolist() == scores[expected].tolist()
    rows, values = top_k(scores, np.zeros(0, dtype=np.int64), 3)
    assert len(rows) == 0 and len(values) == 0


def test_only_visual_rankers_can_be_served():
    assert check_kind("") == "vbpr_codes"
    assert check_kind("vbpr_codes") == "vbpr_codes"
    with pytest.raises(ValueError, match="cannot be served"):
        check_kind("vbpr_pca")


@pytest.mark.parametrize(
    ("job", "state"),
    [
        ({"kind": "import"}, JobState.QUEUED),
        ({"kind": "import", "started": "1"}, JobState.RUNNING),
        ({"kind": "import", "finished": "2", "done": "3", "failed": "1"}, JobState.SUCCEEDED),
        ({"kind": "import", "finished": "2", "duplicates": "3"}, JobState.SUCCEEDED),
        ({"kind": "import", "finished": "2", "done": "0", "failed": "4"}, JobState.FAILED),
        ({"kind": "import", "finished": "2", "reason": "file changed"}, JobState.FAILED),
        ({"kind": "train", "started": "1"}, JobState.RUNNING),
        ({"kind": "train", "preference_version": "3"}, JobState.SUCCEEDED),
        ({"kind": "train", "reason": "no interactions"}, JobState.FAILED),
    ],
)
def test_job_states(job, state):
    assert state_of(job) is state


def test_an_unreadable_header_is_a_clear_error(tmp_path):
    huge = tmp_path / "one-line.csv"
    huge.write_text("user_id," + "x" * 200_000)  # one field past csv's limit, no line break
    with pytest.raises(ValueError, match="line 1: unreadable CSV header"):
        read_header(huge)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"user_id,item_id,timestamp,caf\xe9\n")
    with pytest.raises(ValueError, match="line 1: unreadable CSV header"):
        read_header(latin)
