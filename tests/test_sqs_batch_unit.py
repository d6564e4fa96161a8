"""How an `sqs` batch is cut and settled (streams/sqs_batch.py), in-process: filters, size parts, FIFO groups.

tests/test_sqs.py proves the same through real pollers and ElasticMQ; these pin the rules in milliseconds.
"""

from __future__ import annotations

from typing import Any

from runtime.streams.sqs_batch import RECORD_OVERHEAD, Filters, Settlement, parts


def _record(message_id: str, body: str = "{}", group: str | None = None) -> dict[str, Any]:
    attributes = {} if group is None else {"MessageGroupId": group}
    return {"messageId": message_id, "body": body, "attributes": attributes}


def _ids(records: list[dict[str, Any]]) -> list[str]:
    return [record["messageId"] for record in records]


def test_in_a_fifo_queue_a_failure_keeps_every_later_message_of_its_group_only() -> None:
    settlement = Settlement(fifo=True)
    first = [_record("a1", group="a"), _record("b1", group="b"), _record("a2", group="a")]
    second = [_record("a3", group="a"), _record("b2", group="b")]

    assert _ids(settlement.succeeded(first, {"a1"})) == ["b1"]          # a2 stays behind a1
    assert _ids(settlement.runnable(second)) == ["b2"]                   # a3 is not even run
    assert _ids(settlement.succeeded([_record("b2", group="b")], set())) == ["b2"]


def test_in_a_standard_queue_only_the_failed_messages_stay() -> None:
    settlement = Settlement(fifo=False)
    part = [_record("1"), _record("2"), _record("3")]

    assert _ids(settlement.succeeded(part, {"2"})) == ["1", "3"]
    assert _ids(settlement.runnable([_record("4")])) == ["4"]
    assert settlement.succeeded(part, {"1", "2", "3"}) == []


def test_parts_keep_each_event_under_the_size_limit_and_the_order() -> None:
    records = [_record(str(n), body="x" * 1000) for n in range(5)]

    split = parts(records, limit_bytes=2 * (1000 + RECORD_OVERHEAD))

    assert [_ids(part) for part in split] == [["0", "1"], ["2", "3"], ["4"]]
    big = [_record("big", body="x" * 10_000)]
    assert [_ids(part) for part in parts(big, limit_bytes=100)] == [["big"]]   # one record always goes alone


def test_filters_match_the_json_body_or_the_plain_text_and_none_take_everything() -> None:
    filters = Filters([{"body": {"kind": ["order"]}}])

    assert filters.wanted(_record("1", body='{"kind": "order"}'))
    assert not filters.wanted(_record("2", body='{"kind": "refund"}'))
    assert not filters.wanted(_record("3", body="{not json"))
    assert Filters([]).wanted(_record("4", body="anything"))
