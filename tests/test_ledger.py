import os
import stat

import pytest

from controller.ledger import FileLedger, LedgerError, SessionRecord
from controller.vast import GrantedSession


def _record(n: int) -> SessionRecord:
    session = GrantedSession(
        session_id=f"s{n}", auth_data={"url": "http://w", "signature": "secret"}, expires_at=100.0 + n, lifetime=60.0
    )
    return SessionRecord(session=session, opened_at=float(n))


def test_round_trip_keeps_auth_data_exactly(tmp_path):
    ledger = FileLedger(tmp_path / "state", "jobs")
    records = [_record(1), _record(2)]
    ledger.save(records)
    assert ledger.load() == records


def test_file_is_private_and_no_temp_files_are_left(tmp_path):
    ledger = FileLedger(tmp_path, "jobs")
    ledger.save([_record(1)])
    ledger.save([])
    assert stat.S_IMODE(os.stat(ledger.path).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.sessions.json"]
    assert ledger.load() == []


def test_missing_file_is_an_empty_ledger(tmp_path):
    assert FileLedger(tmp_path, "jobs").load() == []


def test_corrupt_file_names_the_file(tmp_path):
    ledger = FileLedger(tmp_path, "jobs")
    ledger.path.write_text("{not json")
    with pytest.raises(LedgerError, match="jobs.sessions.json is corrupt"):
        ledger.load()


def test_unwritable_directory_is_a_ledger_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LedgerError, match="cannot write session ledger"):
        FileLedger(blocker / "state", "jobs").save([_record(1)])
