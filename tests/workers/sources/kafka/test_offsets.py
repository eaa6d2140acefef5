"""Offset bookkeeping: only a partition's unbroken prefix of finished records is committed."""

from __future__ import annotations

from workers.sources.kafka.offsets import OffsetBook

P0, P1 = ("t", 0), ("t", 1)


def received(book: OffsetBook, tp: tuple[str, int], offsets: range) -> None:
    for offset in offsets:
        book.received(tp, offset)


def test_nothing_is_committable_before_anything_finishes() -> None:
    book = OffsetBook()
    received(book, P0, range(5))
    assert book.to_commit() == {} and book.in_flight() == 5


def test_a_partition_commits_only_its_prefix_of_finished_records() -> None:
    book = OffsetBook()
    received(book, P0, range(10))
    for offset in (0, 1, 2, 4, 5):  # 3 is still being scored
        book.finished(P0, offset, ok=True)
    assert book.to_commit() == {P0: 3}
    book.finished(P0, 3, ok=True)
    assert book.to_commit() == {P0: 6}  # 3 closed the gap: 4 and 5 follow
    assert book.in_flight() == 4


def test_partitions_are_independent() -> None:
    book = OffsetBook()
    received(book, P0, range(3))
    received(book, P1, range(100, 103))
    for offset in range(3):
        book.finished(P0, offset, ok=True)
    book.finished(P1, 101, ok=True)
    assert book.to_commit() == {P0: 3}
    assert book.to_commit([P1]) == {}


def test_a_retry_is_never_committed_and_the_partition_rewinds_to_it() -> None:
    book = OffsetBook()
    received(book, P0, range(10))
    for offset in range(10):
        book.finished(P0, offset, ok=offset not in (4, 7))
    assert book.to_commit() == {P0: 4}
    assert book.rewind() == {P0: 4}
    assert book.rewind() == {}  # rewound once; nothing left to retry
    assert book.in_flight() == 0  # 4..9 forgotten: the consumer reads them again
    received(book, P0, range(4, 10))
    for offset in range(4, 10):
        book.finished(P0, offset, ok=True)
    assert book.to_commit() == {P0: 10}


def test_a_commit_that_failed_is_offered_again_and_a_success_clears_it() -> None:
    book = OffsetBook()
    received(book, P0, range(3))
    for offset in range(3):
        book.finished(P0, offset, ok=True)
    assert book.to_commit() == {P0: 3}  # the broker refused: still there next time
    book.committed({P0: 3})
    assert book.to_commit() == {}


def test_a_commit_of_an_older_offset_does_not_hide_newer_finished_records() -> None:
    book = OffsetBook()
    received(book, P0, range(6))
    for offset in range(3):
        book.finished(P0, offset, ok=True)
    offered = book.to_commit()
    for offset in range(3, 6):
        book.finished(P0, offset, ok=True)
    book.committed(offered)
    assert book.to_commit() == {P0: 6}


def test_gaps_in_offsets_do_not_block_the_prefix() -> None:
    book = OffsetBook()
    for offset in (10, 12, 15):  # compacted topic / transaction markers
        book.received(P0, offset)
        book.finished(P0, offset, ok=True)
    assert book.to_commit() == {P0: 16}


def test_revoked_partitions_are_forgotten_and_late_outcomes_ignored() -> None:
    book = OffsetBook()
    received(book, P0, range(3))
    received(book, P1, range(3))
    book.finished(P0, 0, ok=True)
    book.forget([P0])
    book.finished(P0, 1, ok=True)
    assert book.to_commit() == {} and book.in_flight() == 3


def test_redelivery_after_a_seek_starts_the_partition_again_there() -> None:
    book = OffsetBook()
    received(book, P0, range(5))
    book.finished(P0, 0, ok=True)
    received(book, P0, range(2, 5))  # seek back to 2 by someone else
    for offset in range(1, 5):
        book.finished(P0, offset, ok=True)
    assert book.to_commit() == {P0: 5} and book.in_flight() == 0
