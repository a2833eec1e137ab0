import json
import os
import stat
import uuid

import pytest
import redis

from controller.ledger import COMPACT_MIN_LINES, FileLedger, LedgerError, RedisLedger, SessionRecord
from controller.vast import GrantedSession


def _record(n: int, expires_at: float = 100.0) -> SessionRecord:
    session = GrantedSession(
        session_id=f"s{n}", auth_data={"url": "http://w", "signature": "secret"}, expires_at=expires_at + n, lifetime=60.0
    )
    return SessionRecord(session=session, opened_at=float(n))


def _lines(ledger: FileLedger) -> list[dict]:
    return [json.loads(line) for line in ledger.path.read_text().splitlines()]


def test_round_trip_keeps_auth_data_exactly(tmp_path):
    ledger = FileLedger(tmp_path / "state", "jobs")
    records = [_record(1), _record(2)]
    ledger.write({r.session_id: r for r in records})
    assert FileLedger(tmp_path / "state", "jobs").load() == records


def test_each_change_appends_one_line(tmp_path):
    ledger = FileLedger(tmp_path, "jobs")
    ledger.load()
    ledger.write({"s1": _record(1), "s2": _record(2)})
    renewed = _record(1, expires_at=160.0)
    ledger.write({"s1": renewed})
    ledger.write({"s2": None})
    assert [line["session_id"] for line in _lines(ledger)] == ["s1", "s2", "s1", "s2"]
    assert _lines(ledger)[-1] == {"session_id": "s2", "closed": True}
    assert FileLedger(tmp_path, "jobs").load() == [renewed]


def test_history_is_compacted_when_it_outgrows_the_live_records(tmp_path):
    ledger = FileLedger(tmp_path, "jobs")
    ledger.write({"s1": _record(1)})
    for n in range(COMPACT_MIN_LINES + 10):
        ledger.write({"s1": _record(1, expires_at=float(n))})
    assert len(_lines(ledger)) < COMPACT_MIN_LINES
    assert FileLedger(tmp_path, "jobs").load() == [_record(1, expires_at=float(COMPACT_MIN_LINES + 9))]


def test_a_line_torn_by_a_crash_is_ignored_and_rewritten_away(tmp_path):
    ledger = FileLedger(tmp_path, "jobs")
    ledger.write({"s1": _record(1), "s2": _record(2)})
    with open(ledger.path, "ab") as handle:  # a crash in the middle of appending "s2 closed"
        handle.write(b'{"session_id":"s2","clo')
    restarted = FileLedger(tmp_path, "jobs")
    assert restarted.load() == [_record(1), _record(2)]
    restarted.write({"s3": _record(3)})
    assert FileLedger(tmp_path, "jobs").load() == [_record(1), _record(2), _record(3)]


def test_a_bad_line_before_the_last_is_corruption_naming_the_file_and_line(tmp_path):
    ledger = FileLedger(tmp_path, "jobs")
    ledger.write({"s1": _record(1)})
    with open(ledger.path, "ab") as handle:
        handle.write(b"{not json\n")
        handle.write(json.dumps(_record(2).to_json()).encode() + b"\n")
    with pytest.raises(LedgerError, match=r"jobs.sessions.jsonl \(line 2\) is corrupt"):
        FileLedger(tmp_path, "jobs").load()


def test_file_is_private_and_no_temp_files_are_left(tmp_path):
    ledger = FileLedger(tmp_path, "jobs")
    ledger.write({"s1": _record(1)})
    ledger.write({"s1": None})
    assert stat.S_IMODE(os.stat(ledger.path).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.sessions.jsonl"]
    assert FileLedger(tmp_path, "jobs").load() == []


def test_the_earlier_whole_file_format_is_read_and_replaced(tmp_path):
    legacy = tmp_path / "jobs.sessions.json"
    legacy.write_text(json.dumps({"version": 1, "sessions": [_record(1).to_json()]}))
    ledger = FileLedger(tmp_path, "jobs")
    assert ledger.load() == [_record(1)]
    assert not legacy.exists()
    assert FileLedger(tmp_path, "jobs").load() == [_record(1)]


def test_missing_file_is_an_empty_ledger(tmp_path):
    assert FileLedger(tmp_path, "jobs").load() == []


def test_unwritable_directory_is_a_ledger_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LedgerError, match="cannot (read|write) session ledger .*/file/state/jobs.sessions.jsonl"):
        FileLedger(blocker / "state", "jobs").write({"s1": _record(1)})


def test_a_failed_append_rewrites_the_whole_file_next_time(tmp_path, monkeypatch):
    ledger = FileLedger(tmp_path, "jobs")
    ledger.write({"s1": _record(1)})
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, data[: len(data) // 2])  # a torn line, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(LedgerError, match="cannot write session ledger .*No space left"):
        ledger.write({"s2": _record(2)})
    monkeypatch.setattr(os, "write", real_write)
    ledger.write({"s3": _record(3)})
    assert FileLedger(tmp_path, "jobs").load() == [_record(1), _record(2), _record(3)]


# -- Redis ----------------------------------------------------------------------------------------


@pytest.fixture
def state_url(redis_url):
    prefix = f"test-ledger-{uuid.uuid4().hex[:8]}"
    yield f"{redis_url}{'&' if '?' in redis_url else '?'}prefix={prefix}"
    client = redis.Redis.from_url(redis_url)
    client.delete(f"{prefix}:jobs:sessions", f"{prefix}:jobs:fence")
    client.close()


def test_redis_ledger_is_a_hash_with_one_field_per_session(state_url, redis_url):
    ledger = RedisLedger(state_url, "jobs")
    assert ledger.load() == []
    ledger.write({"s1": _record(1), "s2": _record(2)})
    ledger.write({"s1": None, "s2": _record(2, expires_at=160.0)})
    client = redis.Redis.from_url(redis_url)
    assert client.hkeys(ledger.key) == [b"s2"]
    client.close()
    assert RedisLedger(state_url, "jobs").load() == [_record(2, expires_at=160.0)]


def test_redis_ledger_refuses_a_deposed_writer(state_url):
    first = RedisLedger(state_url, "jobs")
    first.load()
    first.write({"s1": _record(1)})
    second = RedisLedger(state_url, "jobs")
    assert second.load() == [_record(1)]
    with pytest.raises(LedgerError, match="another leader took it over"):
        first.write({"s9": _record(9)})
    second.write({"s2": _record(2)})
    assert sorted(r.session_id for r in RedisLedger(state_url, "jobs").load()) == ["s1", "s2"]


def test_redis_ledger_reads_the_earlier_single_document(state_url, redis_url):
    ledger = RedisLedger(state_url, "jobs")
    client = redis.Redis.from_url(redis_url)
    client.set(ledger.key, json.dumps({"version": 1, "sessions": [_record(1).to_json()]}))
    assert ledger.load() == [_record(1)]
    assert client.type(ledger.key) == b"hash"
    client.close()
    assert RedisLedger(state_url, "jobs").load() == [_record(1)]


def test_redis_ledger_write_needs_a_load_first(state_url):
    with pytest.raises(LedgerError, match=r"write\(\) before load\(\)"):
        RedisLedger(state_url, "jobs").write({})
