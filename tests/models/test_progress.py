"""Progress records (models.progress): what the learner and the policy trainer append, read
back as a lockstep run reads them, on real files."""

from __future__ import annotations

from pathlib import Path

from models.progress import append_record, policy_caught_up, read_records, trained_rows


def test_records_read_back_in_order_and_a_line_being_written_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "learner.jsonl"
    assert read_records(path) == [] and trained_rows(path) is None  # no retrain yet
    append_record(path, {"rows": 200, "accepted": True})
    append_record(path, {"rows": 400, "accepted": False})
    with open(path, "a") as f:
        f.write('{"rows": 6')  # the learner's next line, half written when the run reads
    assert [r["rows"] for r in read_records(path)] == [200, 400]
    assert trained_rows(path) == 400


def test_the_policy_has_caught_up_when_its_newest_line_owes_nothing_for_the_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "policy.jsonl"
    assert not policy_caught_up(path, 0)  # no policy published yet
    append_record(path, {"real_rows": 200, "owed": 0})
    assert policy_caught_up(path, 200)
    assert not policy_caught_up(path, 260)  # the model saw rows the policy has not
    append_record(path, {"real_rows": 260, "owed": 40})
    assert not policy_caught_up(path, 260)  # published while behind
    append_record(path, {"real_rows": 260, "owed": 0})
    assert policy_caught_up(path, 260)
