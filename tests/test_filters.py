"""capture.filters against Serf's own -event-handler filter semantics (event_handler.go)."""

from __future__ import annotations

import pytest

from serfbridge.capture import filters
from serfbridge.capture.event import EVENT_TYPES

MEMBER_TYPES = ["member-join", "member-leave", "member-failed", "member-update", "member-reap"]
# (event type, name) pairs: every member type, plus user events and queries with names.
EVENTS: list[tuple[str, str | None]] = [
    *((t, None) for t in MEMBER_TYPES),
    ("user", "deploy"),
    ("user", "deployx"),
    ("user", "Deploy"),
    ("user", ""),
    ("query", "load"),
    ("query", "deploy"),
]


def _ids(event: tuple[str, str | None]) -> str:
    kind, name = event
    return kind if name is None else f"{kind}:{name or '(empty)'}"


def _expected(spec: str, kind: str, name: str | None) -> bool:
    """What Serf's EventFilter.Invoke decides, written out independently of filters.py."""
    for raw in (spec or "*").split(","):
        term, want_name = raw, ""
        if raw.startswith("user:"):
            term, want_name = "user", raw[len("user:") :]
        elif raw.startswith("query:"):
            term, want_name = "query", raw[len("query:") :]
        if term == "*":
            return True
        if term != kind:
            continue
        if term in ("user", "query") and want_name and want_name != name:
            continue
        return True
    return False


SPECS = [
    pytest.param("", id="empty-is-star"),
    pytest.param("*", id="star"),
    pytest.param("user", id="user-all"),
    pytest.param("user:", id="user-empty-name-all"),
    pytest.param("user:deploy", id="user-deploy"),
    pytest.param("query", id="query-all"),
    pytest.param("query:", id="query-empty-name-all"),
    pytest.param("query:load", id="query-load"),
    pytest.param("member-join", id="member-join"),
    pytest.param("member-join,member-leave", id="member-list"),
    pytest.param("member-failed,member-reap,member-update", id="member-list-3"),
    pytest.param("user:deploy,query:load", id="user-and-query"),
    pytest.param("member-join,*", id="star-in-list"),
    pytest.param("user:deploy,user:other", id="two-user-names"),
]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("event", EVENTS, ids=_ids)
def test_matches_like_serf(spec: str, event: tuple[str, str | None]) -> None:
    """parse + matches decide every (filter, event) pair the way Serf's Invoke does."""
    kind, name = event
    assert filters.matches(filters.parse(spec), kind, name) is _expected(spec, kind, name)


@pytest.mark.parametrize(
    ("spec", "event", "name", "expected"),
    [
        pytest.param("", "member-reap", None, True, id="empty-matches-member"),
        pytest.param("", "query", "load", True, id="empty-matches-query"),
        pytest.param("user:", "user", "anything", True, id="user-colon-matches-all-user"),
        pytest.param("user:", "query", "anything", False, id="user-colon-not-query"),
        pytest.param("user:deploy", "user", "deploy", True, id="exact-name"),
        pytest.param("user:deploy", "user", "deploy2", False, id="no-prefix-match"),
        pytest.param("user:deploy", "user", "Deploy", False, id="case-sensitive"),
        pytest.param("user:dep*", "user", "deploy", False, id="no-globs"),
        pytest.param("user:dep*", "user", "dep*", True, id="star-in-name-is-literal"),
        pytest.param("user:deploy", "query", "deploy", False, id="user-filter-not-query"),
        pytest.param("query:load", "query", "load", True, id="query-exact"),
        pytest.param("query:load", "user", "load", False, id="query-filter-not-user"),
        pytest.param("member-join", "member-leave", None, False, id="other-member-type"),
        pytest.param("member-join,member-leave", "member-leave", None, True, id="list-second"),
        pytest.param("user:a:b", "user", "a:b", True, id="colon-in-name"),
        pytest.param("user:a=b", "user", "a=b", True, id="equals-in-name"),
    ],
)
def test_matches_table(spec: str, event: str, name: str | None, expected: bool) -> None:
    """Spot checks of Serf's rules: empty is *, user: matches all, names are exact."""
    assert filters.matches(filters.parse(spec), event, name) is expected


@pytest.mark.parametrize(
    ("spec", "terms"),
    [
        pytest.param("", [("*", None)], id="empty"),
        pytest.param("*", [("*", None)], id="star"),
        pytest.param("user", [("user", None)], id="user"),
        pytest.param("user:", [("user", None)], id="user-colon"),
        pytest.param("query:", [("query", None)], id="query-colon"),
        pytest.param("user:deploy", [("user", "deploy")], id="user-name"),
        pytest.param(
            "member-join,user:deploy,query:load",
            [("member-join", None), ("user", "deploy"), ("query", "load")],
            id="list",
        ),
    ],
)
def test_parse_terms(spec: str, terms: list[tuple[str, str | None]]) -> None:
    """parse returns (type, name-or-None) terms in order; an empty name means any."""
    assert filters.parse(spec) == terms


@pytest.mark.parametrize(
    ("spec", "bad"),
    [
        pytest.param("member-bogus", "member-bogus", id="member-bogus"),
        pytest.param("users", "users", id="users"),
        pytest.param("USER", "USER", id="upper-case"),
        pytest.param("member-join,bogus", "bogus", id="second-term"),
        pytest.param("member-join,", "", id="trailing-comma"),
        pytest.param(",", "", id="only-comma"),
        pytest.param("*:x", "*:x", id="star-with-name"),
        pytest.param("member-join:x", "member-join:x", id="member-with-name"),
        pytest.param("users:deploy", "users:deploy", id="users-colon"),
        pytest.param("echo a", "echo a", id="script-not-filter"),
    ],
)
def test_invalid_term_raises(spec: str, bad: str) -> None:
    """An invalid term raises ValueError naming that term, as Serf's Valid() rejects it."""
    with pytest.raises(ValueError, match="invalid event filter term") as info:
        filters.parse(spec)
    assert repr(bad) in str(info.value)


def test_event_types_are_serfs() -> None:
    """EVENT_TYPES are exactly the seven SERF_EVENT values Serf sets."""
    assert set(EVENT_TYPES) == {*MEMBER_TYPES, "user", "query"}
