"""Crash safety under fault injection (bench/faults.py runs the same sequence and writes bench/faults.md): a real
ASVP run killed in every phase, with a corrupt feature shard and a removed checkpoint, and its driver actor killed
and restarted by Ray, ends exactly where an uninterrupted run with the same seed ends."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import faults as fault_bench  # noqa: E402

pytestmark = [pytest.mark.timeout(1500), pytest.mark.ray]


def test_every_fault_then_resume_gives_the_uninterrupted_result(tmp_path):
    res = fault_bench.run_all(tmp_path)
    rows = res["rows"]
    for row in rows[:-1]:
        assert all(row["fired"]), row  # each fault really happened in its phase
        assert row["killed"], row  # ... and the run was SIGKILLed there (the actor exit alone does not stop it)
        assert row["problems"] == [], row  # the store is consistent after every kill
    assert "corrupted" in rows[0]["damage"] and "(1 left)" in rows[3]["damage"], rows  # resumes from the older
    assert rows[1]["rounds_committed"] == 0 and rows[2]["labels"] == 20  # killed before round 0's commit
    assert rows[4]["rounds_committed"] == 2  # round 2 (the refresh) had not committed when v1 was being written
    assert rows[-1]["rc"] == 0 and rows[-1]["problems"] == [], rows[-1]["stderr"]
    assert "resumed" in res["resumed_out"]
    assert res["faulted"] == res["reference"]  # labeled set, every query, rounds table (incl. the refresh)
    assert [r["refreshed"] for r in res["faulted"]["rounds"]] == [False, False, True]
    assert res["v1_max_abs_diff"] is not None and res["v1_max_abs_diff"] < 1e-4
