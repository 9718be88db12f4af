"""LegChunks' replay buffer: only audio not yet covered by a result, from the first voiced chunk."""

from __future__ import annotations

from daemon.ops.metrics import Metrics
from daemon.upstream.chunks import CHUNK_S, Chunk, LegChunks, replay_chunks_for


def chunk(i: int) -> Chunk:
    return (i, i * CHUNK_S, (i + 1) * CHUNK_S, bytes([i]) * 8000, 0.0)


def write(lc: LegChunks, voiced: list[bool]) -> list[Chunk]:
    items = [chunk(i) for i in range(len(voiced))]
    for item, v in zip(items, voiced, strict=True):
        lc.written(item, 0.0, v)
    return items


def test_covered_chunks_leave_the_buffer_and_the_rest_is_replayed_in_order() -> None:
    lc = LegChunks(queue_chunks=40, replay_chunks=40, metrics=Metrics())
    items = write(lc, [True] * 6)
    assert lc.replay_held == 6
    lc.covered(2 * CHUNK_S)  # a result up to the end of chunk 1
    assert lc.replay_held == 4
    lc.covered(1 * CHUNK_S)  # an older result changes nothing
    assert lc.replay_held == 4
    lc.covered(2.5 * CHUNK_S)  # half of chunk 2: it is still owed its end
    assert lc.replay_held == 4
    assert lc.requeue_for_replay() == 4
    assert list(lc.queue) == items[2:]
    assert lc.replay_held == 0


def test_silence_with_nothing_owed_is_not_kept() -> None:
    lc = LegChunks(queue_chunks=40, replay_chunks=40, metrics=Metrics())
    items = write(lc, [False, False, True, False, True, False])
    assert lc.replay_held == 4  # from the first voiced chunk on; silence between voiced chunks keeps time
    lc.covered(3 * CHUNK_S)  # covers chunk 2: the silent chunk 3 after it owes nothing either
    assert lc.replay_held == 2
    assert lc.requeue_for_replay() == 2
    assert list(lc.queue) == items[4:]


def test_bound_and_queued_chunks_are_not_replayed_twice() -> None:
    lc = LegChunks(queue_chunks=40, replay_chunks=3, metrics=Metrics())
    items = write(lc, [True] * 5)
    assert lc.replay_held == 3  # the oldest went first
    lc.push(items[4])  # already queued again: not put in front a second time
    assert lc.requeue_for_replay() == 2
    assert list(lc.queue) == [items[2], items[3], items[4]]


def test_replay_off_and_seconds_to_chunks() -> None:
    lc = LegChunks(queue_chunks=40, replay_chunks=0, metrics=Metrics())
    write(lc, [True] * 3)
    assert lc.replay_held == 0 and lc.requeue_for_replay() == 0
    assert replay_chunks_for(0) == 0
    assert replay_chunks_for(10.0) == 40
    assert replay_chunks_for(0.1) == 1
    assert replay_chunks_for(2.3) == 10


def test_the_old_chunk_count_key_is_refused_with_its_replacement() -> None:
    import pytest

    from daemon.config import ConfigError, parse_config

    assert parse_config({"daemon": {"replay_buffer_s": 2.5}}, "test").daemon.replay_buffer_s == 2.5
    with pytest.raises(ConfigError, match="replay_buffer_s"):
        parse_config({"daemon": {"replay_buffer_chunks": 40}}, "test")
