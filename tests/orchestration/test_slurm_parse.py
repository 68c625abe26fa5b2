"""Parsing what sacct, squeue and scontrol print (samples captured on the SLURM 22.05 test cluster)."""

from __future__ import annotations

import pytest

from ioussl.backends import slurmtext as slurm

SACCT = """\
1|1|wrap|COMPLETED|0:0|localhost|None|2026-11-26T01:16:41|2026-11-26T01:16:43
3|3|wrap|FAILED|3:0|localhost|None|2026-11-26T01:16:41|2026-11-26T01:16:41
4|4|wrap|CANCELLED|0:0|None assigned|None|None|2026-11-26T01:16:42
2_0|5|wrap|COMPLETED|0:0|localhost|Dependency|2026-11-26T01:16:44|2026-11-26T01:16:44
2_1|2|wrap|COMPLETED|0:0|localhost|Dependency|2026-11-26T01:16:44|2026-11-26T01:16:44
7|7|weird name|x|CANCELLED by 0|0:15|localhost|None|2026-11-26T01:18:38|2026-11-26T01:18:39
8_[0-2%2]|8|ioussl-ft|PENDING|0:0|None assigned|Dependency|Unknown|Unknown
9.batch|9.batch|batch|COMPLETED|0:0|localhost||2026-11-26T01:18:38|2026-11-26T01:18:39
garbage line
"""


def test_parse_sacct_reads_every_field():
    jobs = slurm.parse_sacct(SACCT)
    assert jobs["3"].state == "FAILED" and jobs["3"].exit_code == 3 and jobs["3"].signal == 0
    assert jobs["4"].node is None and jobs["4"].start is None and jobs["4"].end == "2026-11-26T01:16:42"
    assert jobs["2_0"].state == "COMPLETED" and jobs["2_1"].node == "localhost"
    assert "9.batch" not in jobs and "9" not in jobs


def test_parse_sacct_job_name_with_separator_and_cancelled_by():
    job = slurm.parse_sacct(SACCT)["7"]
    assert (job.name, job.state, job.raw_state, job.signal) == (
        "weird name|x",
        "CANCELLED",
        "CANCELLED by 0",
        15,
    )


def test_parse_sacct_expands_pending_array():
    jobs = slurm.parse_sacct(SACCT)
    assert [jobs[f"8_{i}"].state for i in range(3)] == ["PENDING"] * 3
    assert jobs["8_1"].reason == "Dependency"


def test_lookup_falls_back_to_a_whole_array_record():
    jobs = slurm.parse_sacct("12|12|allocation|CANCELLED|0:0|None assigned|None|None|2026-11-26T01:18:39\n")
    task = slurm.lookup(jobs, "12_1")
    assert task is not None and task.job_id == "12_1" and task.state == "CANCELLED"
    assert slurm.lookup(jobs, "13_0") is None


@pytest.mark.parametrize(
    "job_id, expected",
    [
        ("12", ["12"]),
        ("12_3", ["12_3"]),
        ("12_[0-2]", ["12_0", "12_1", "12_2"]),
        ("12_[0-1,5%4]", ["12_0", "12_1", "12_5"]),
        ("12.batch", []),
        ("", []),
    ],
)
def test_expand_job_ids(job_id, expected):
    assert slurm.expand_job_ids(job_id) == expected


@pytest.mark.parametrize(
    "raw, state",
    [
        ("CANCELLED by 0", "CANCELLED"),
        ("RUNNING", "RUNNING"),
        ("completed", "COMPLETED"),
        ("", "UNKNOWN"),
        ("OUT_OF_MEMORY", "OUT_OF_MEMORY"),
        ("REQUEUED+", "REQUEUED"),
    ],
)
def test_normalise_state(raw, state):
    assert slurm.normalise_state(raw) == state


@pytest.mark.parametrize("text, expected", [("0:0", (0, 0)), ("1:0", (1, 0)), ("0:9", (0, 9)), ("", (None, None))])
def test_parse_exit_code(text, expected):
    assert slurm.parse_exit_code(text) == expected


SQUEUE = """\
2_0|wrap|PENDING|Dependency||N/A|N/A
2_1|wrap|PENDING|Dependency||N/A|N/A
1|weird name|x|RUNNING|None|localhost|2026-11-26T01:18:38|NONE
"""


def test_parse_squeue():
    jobs = slurm.parse_squeue(SQUEUE)
    assert set(jobs) == {"2_0", "2_1", "1"}
    assert jobs["2_0"].reason == "Dependency" and jobs["2_0"].node is None
    assert jobs["1"].name == "weird name|x" and jobs["1"].state == "RUNNING" and jobs["1"].node == "localhost"
    assert jobs["1"].exit_code is None


SCONTROL = (
    "JobId=1 JobName=ioussl-r1 UserId=root(0) GroupId=root(0) JobState=FAILED Reason=NonZeroExitCode "
    "Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 ExitCode=1:0 StartTime=2026-11-26T01:18:38 "
    "EndTime=2026-11-26T01:18:40 Partition=debug AllocNode:Sid=localhost:2662 NodeList=localhost\n"
    "JobId=2 ArrayJobId=2 ArrayTaskId=0-2 JobName=ioussl-a2 JobState=PENDING "
    "Reason=DependencyNeverSatisfied Dependency=afterok:1(failed) ExitCode=0:0 StartTime=Unknown "
    "EndTime=Unknown NodeList=(null)\n"
    "JobId=6 ArrayJobId=5 ArrayTaskId=1 JobName=my job name JobState=COMPLETED Reason=None ExitCode=0:0 "
    "NodeList=localhost\n"
    "No jobs in the system\n"
)


def test_parse_scontrol():
    jobs = slurm.parse_scontrol(SCONTROL)
    assert jobs["1"].state == "FAILED" and jobs["1"].exit_code == 1 and jobs["1"].reason == "NonZeroExitCode"
    assert jobs["1"].node == "localhost" and jobs["1"].end == "2026-11-26T01:18:40"
    assert [jobs[f"2_{i}"].reason for i in range(3)] == ["DependencyNeverSatisfied"] * 3
    assert jobs["5_1"].name == "my job name" and jobs["5_1"].state == "COMPLETED"
    assert "6" not in jobs


def test_sacct_command_queries_array_jobs_by_their_array_id_once():
    argv = slurm.sacct_command(["12_0", "12_1", "3", "100"])
    assert argv[0] == "sacct" and "--parsable2" in argv and "-X" in argv
    assert argv[-2:] == ["-j", "3,12,100"]


def test_query_uses_one_sacct_and_asks_the_controller_only_for_jobs_sacct_does_not_list_yet():
    from ioussl.backends.slurmcmd import query_jobs
    from ioussl.errors import SubmissionError

    calls = []

    def runner(argv):
        calls.append(argv[0])
        if argv[0] == "sacct":
            return "5|5|a|RUNNING|0:0|localhost|None|2026-11-26T01:00:00|Unknown\n"
        if argv[0] == "scontrol":
            return "JobId=6 JobName=b JobState=PENDING Reason=Dependency ExitCode=0:0\n"
        raise SubmissionError("no squeue here")

    only_known = query_jobs(["5"], runner)
    assert (only_known.calls, only_known.source, calls) == (1, "sacct", ["sacct"])
    both = query_jobs(["5", "6"], runner)
    assert both.source == "sacct+scontrol" and both.jobs["6"].state == "PENDING" and both.jobs["5"].state == "RUNNING"


def test_query_falls_back_when_accounting_is_off():
    from ioussl.backends.slurmcmd import query_jobs
    from ioussl.errors import SubmissionError

    def runner(argv):
        if argv[0] == "sacct":
            raise SubmissionError("sacct failed: Slurm accounting storage is disabled")
        if argv[0] == "scontrol":
            raise SubmissionError("scontrol failed")
        return "7|b|COMPLETED|None|localhost|N/A|N/A\n"

    result = query_jobs(["7"], runner)
    assert result.source == "squeue" and result.jobs["7"].state == "COMPLETED"
