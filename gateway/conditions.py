"""Conditional requests (RFC 9110 section 13) as pure functions of headers and validators."""

import enum
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

_ETAG = re.compile(r'\s*(W/)?("[^"]*")\s*(?:,|$)')


class Outcome(enum.Enum):
    PROCEED = 200
    NOT_MODIFIED = 304
    PRECONDITION_FAILED = 412


def http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def parse_http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_etags(value: str) -> list[tuple[bool, str]] | None:
    """The entity tags of an If-Match / If-None-Match header as (weak, tag); None for `*`."""
    if value.strip() == "*":
        return None
    tags = []
    position = 0
    while position < len(value):
        match = _ETAG.match(value, position)
        if match is None:
            break
        tags.append((bool(match[1]), match[2]))
        position = match.end()
    return tags


def _matches(header: str, etag: str, *, weak: bool) -> bool:
    tags = parse_etags(header)
    if tags is None:
        return True
    return any(tag == etag and (weak or not is_weak) for is_weak, tag in tags)


def _seconds(moment: datetime) -> int:
    return int(moment.timestamp())


def evaluate(
    headers: Mapping[str, str], etag: str, last_modified: datetime, *, safe: bool = True
) -> Outcome:
    """Evaluate the preconditions of a request on an existing object, in RFC 9110's order.

    `safe` is True for GET and HEAD, where a matching If-None-Match means 304, not 412.
    """
    if_match = headers.get("if-match")
    if if_match is not None:
        if not _matches(if_match, etag, weak=False):
            return Outcome.PRECONDITION_FAILED
    elif (since := parse_http_date(headers.get("if-unmodified-since"))) is not None and (
        _seconds(last_modified) > _seconds(since)
    ):
        return Outcome.PRECONDITION_FAILED

    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        if _matches(if_none_match, etag, weak=True):
            return Outcome.NOT_MODIFIED if safe else Outcome.PRECONDITION_FAILED
    elif (
        safe
        and (since := parse_http_date(headers.get("if-modified-since"))) is not None
        and _seconds(last_modified) <= _seconds(since)
    ):
        return Outcome.NOT_MODIFIED
    return Outcome.PROCEED


def if_range_allows(header: str | None, etag: str, last_modified: datetime) -> bool:
    """Whether a Range request may be honoured: True without If-Range, or when it matches."""
    if header is None:
        return True
    header = header.strip()
    if header.startswith(('"', "W/")):
        return not header.startswith("W/") and header == etag
    since = parse_http_date(header)
    return since is not None and _seconds(since) == _seconds(last_modified)
