from datetime import UTC, datetime, timedelta

import pytest

from gateway.conditions import Outcome, evaluate, http_date, if_range_allows, parse_etags

ETAG = '"abc"'
MODIFIED = datetime(2026, 5, 1, 12, 0, 0, 500000, tzinfo=UTC)
BEFORE = http_date(MODIFIED - timedelta(hours=1))
SAME = http_date(MODIFIED)
AFTER = http_date(MODIFIED + timedelta(hours=1))


@pytest.mark.parametrize(
    ("headers", "outcome"),
    [
        ({}, Outcome.PROCEED),
        ({"if-match": ETAG}, Outcome.PROCEED),
        ({"if-match": '"other", "abc"'}, Outcome.PROCEED),
        ({"if-match": "*"}, Outcome.PROCEED),
        ({"if-match": '"other"'}, Outcome.PRECONDITION_FAILED),
        ({"if-match": 'W/"abc"'}, Outcome.PRECONDITION_FAILED),  # If-Match compares strongly
        ({"if-unmodified-since": BEFORE}, Outcome.PRECONDITION_FAILED),
        ({"if-unmodified-since": SAME}, Outcome.PROCEED),
        ({"if-unmodified-since": "garbage"}, Outcome.PROCEED),
        ({"if-match": ETAG, "if-unmodified-since": BEFORE}, Outcome.PROCEED),  # If-Match wins
        ({"if-none-match": ETAG}, Outcome.NOT_MODIFIED),
        ({"if-none-match": 'W/"abc"'}, Outcome.NOT_MODIFIED),  # weak comparison
        ({"if-none-match": "*"}, Outcome.NOT_MODIFIED),
        ({"if-none-match": '"other"'}, Outcome.PROCEED),
        ({"if-modified-since": SAME}, Outcome.NOT_MODIFIED),
        ({"if-modified-since": AFTER}, Outcome.NOT_MODIFIED),
        ({"if-modified-since": BEFORE}, Outcome.PROCEED),
        ({"if-none-match": '"other"', "if-modified-since": AFTER}, Outcome.PROCEED),
        ({"if-match": '"other"', "if-none-match": ETAG}, Outcome.PRECONDITION_FAILED),
    ],
)
def test_evaluation_order_of_rfc9110(headers: dict[str, str], outcome: Outcome) -> None:
    assert evaluate(headers, ETAG, MODIFIED) is outcome


def test_if_none_match_on_unsafe_methods_is_412() -> None:
    outcome = evaluate({"if-none-match": ETAG}, ETAG, MODIFIED, safe=False)
    assert outcome is Outcome.PRECONDITION_FAILED


def test_parse_etags() -> None:
    assert parse_etags("*") is None
    assert parse_etags('"a", W/"b" ,"c"') == [(False, '"a"'), (True, '"b"'), (False, '"c"')]


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        (None, True),
        (ETAG, True),
        ('"other"', False),
        ('W/"abc"', False),
        (SAME, True),
        (BEFORE, False),
        ("nonsense", False),
    ],
)
def test_if_range(header: str | None, allowed: bool) -> None:
    assert if_range_allows(header, ETAG, MODIFIED) is allowed
