"""The readers' JSON decoding (eventstore.store.sql._json_object) gives exactly what json.loads gives."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from eventstore.store.sql import _json_object

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
VALUES = st.recursive(
    SCALARS, lambda children: st.lists(children) | st.dictionaries(st.text(), children), max_leaves=30
)


@given(st.dictionaries(st.text(), VALUES))
def test_decodes_as_json_loads(document: dict[str, Any]) -> None:
    for text in (json.dumps(document), json.dumps(document, ensure_ascii=False, separators=(",", ":"))):
        decoded = _json_object(text)
        assert decoded == json.loads(text)
        assert type(decoded) is dict


def test_empty_objects_are_fresh() -> None:
    first, second = _json_object("{}"), _json_object("{}")
    first["k"] = 1
    assert second == {}
