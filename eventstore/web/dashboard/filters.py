"""The event log's filters: :class:`LogFilter` and :func:`log_filter`, its parsing from a request's query.

The log takes filters as ``GET /api/events`` does (``?category=``, ``?type=``,
``?stream=``); the SQL they become is :func:`eventstore.store.sql.filter_clause`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from eventstore.store import sql
from eventstore.web.errors import RequestError

__all__ = ["LOG_FILTER_LENGTH", "LOG_FILTER_VALUES", "LogFilter", "log_filter"]

LOG_FILTER_VALUES = 20
"""At most this many values per log filter field; each at most :data:`LOG_FILTER_LENGTH` characters."""
LOG_FILTER_LENGTH = 255


@dataclass(frozen=True, slots=True)
class LogFilter:
    """The event log's filters (query parameters ``category``, ``type``, ``stream``, as ``GET /api/events``).

    Values of one field are alternatives, fields combine; empty: every event.
    """

    categories: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    stream_ids: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.categories or self.event_types or self.stream_ids)

    def query(self) -> str:
        """The query string that gives this filter back (``category=order&type=OrderPlaced``)."""
        pairs = [("category", v) for v in self.categories] + [("type", v) for v in self.event_types]
        return urlencode(pairs + [("stream", v) for v in self.stream_ids])

    def parameters(self) -> dict[str, Any]:
        return sql.filter_parameters(self.categories, self.event_types, self.stream_ids)


def log_filter(query: Any) -> LogFilter:
    """The :class:`LogFilter` of a request's query (a starlette ``QueryParams``).

    A field repeats (``?category=order&category=invoice``) or takes comma-separated
    values (``?category=order,invoice``, as the page's form sends); empty values are ignored.

    Raises :class:`RequestError` (422) for more than :data:`LOG_FILTER_VALUES` values of a
    field or a value over :data:`LOG_FILTER_LENGTH` characters.
    """
    fields = []
    for name in ("category", "type", "stream"):
        split = (value.strip() for text in query.getlist(name) for value in text.split(","))
        values = tuple(dict.fromkeys(value for value in split if value))
        if len(values) > LOG_FILTER_VALUES:
            raise RequestError(422, f"query parameter {name}: at most {LOG_FILTER_VALUES} values, got {len(values)}")
        for value in values:
            if len(value) > LOG_FILTER_LENGTH:
                raise RequestError(
                    422, f"query parameter {name}={value[:20]!r}...: at most {LOG_FILTER_LENGTH} characters"
                )
        fields.append(values)
    return LogFilter(*fields)
