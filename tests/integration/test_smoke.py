from eventstore import NO_STREAM, EventStore, NewEvent


def test_append_then_read_all(store: EventStore) -> None:
    store.append("order-1", [NewEvent("OrderPlaced", {"total": 1})], expected_version=NO_STREAM)
    assert [event.type for event in store.read_all()] == ["OrderPlaced"]
