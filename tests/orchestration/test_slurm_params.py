"""Job resources -> submitit/sbatch parameters, and a golden copy of the sbatch script submitit writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ioussl.backends import slurmtext as slurm
from ioussl.errors import ConfigError

GOLDEN = Path(__file__).parent / "golden"
# A run's stored resources, as study.py merges them: the cluster profile under "slurm", the stage's own
# settings beside it.
PROFILE = {
    "slurm": {
        "partition": "gpu",
        "account": "plgssl",
        "qos": "normal",
        "constraint": "v100",
        "setup": ["module load CUDA/11.7"],
        "additional": {"--mail-type": "FAIL"},
    },
    "gpus": 1,
    "cpus_per_task": 8,
    "mem_gb": 32,
    "time_min": 1440,
}


def test_stage_settings_override_the_cluster_profile():
    stored = {
        **PROFILE,
        "slurm": {**PROFILE["slurm"], "gpus_per_node": 4, "time_min": 60},
        "additional": {"mail-type": "END"},
    }
    res = slurm.resources_for_run(stored)
    assert (res.partition, res.time_min, res.gpus_per_node) == ("gpu", 1440, 1)
    assert res.extra == {"mail-type": "END"} and res.setup == ("module load CUDA/11.7",)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"partitoin": "gpu"}, "unknown key.*partitoin; valid keys: account"),
        ({"time_min": "1h"}, "time_min: expected an integer"),
        ({"cpus_per_task": 0}, "cpus_per_task: expected an integer >= 1, got 0"),
        ({"additional": "--foo"}, "expected a table of sbatch options"),
        ({"mem_gb": -1}, "mem_gb: expected a positive number"),
        ({"slurm": {"partition": 7}}, "partition: expected a string"),
        ({"slurm": {"setup": "module load x"}}, "setup: expected a list of shell lines"),
        ({"max_running": 0}, "max_running: expected an integer >= 1, got 0"),
        ({"max_running": True}, "max_running: expected an integer, got True"),
    ],
)
def test_bad_resources_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        slurm.resources_for_run({**PROFILE, **change})


@pytest.mark.parametrize(
    "fields, gpus, hours",
    [
        ({}, 1, 24.0),
        ({"gpus_per_node": 2, "time_min": 90}, 2, 3.0),
        ({"gres": "gpu:v100:2"}, 2, 48.0),
        ({"gres": "gpu"}, 1, 24.0),
        ({"gpus_per_node": 0}, 0, 0.0),
    ],
)
def test_gpu_hours(fields, gpus, hours):
    res = slurm.Resources(**fields)
    assert (res.gpus(), res.gpu_hours()) == (gpus, hours)


def test_dependent_job_is_killed_on_an_invalid_dependency():
    res = slurm.resources_for_run(PROFILE)
    params = slurm.submitit_parameters(res, job_name="ioussl-r2", dependency="afterok:41")
    assert params["dependency"] == "afterok:41"
    assert params["additional_parameters"] == {"mail-type": "FAIL", "hold": True, "kill-on-invalid-dep": "yes"}
    assert params["setup"] == ["export IOUSSL_SIGNAL_DELAY_S=120", "module load CUDA/11.7"]
    assert params["gpus_per_node"] == 1 and params["mem"] == "32GB" and "gres" not in params
    independent = slurm.submitit_parameters(res, job_name="ioussl-r1")
    assert (
        "dependency" not in independent and "kill-on-invalid-dep" not in independent["additional_parameters"]
    )


def test_sbatch_flags_for_dry_run():
    params = slurm.submitit_parameters(
        slurm.Resources(partition="gpu", gres="gpu:v100:1"), job_name="x", dependency="afterok:7"
    )
    flags = slurm.sbatch_flags(params, array_size=2)
    assert "--partition=gpu" in flags and "--gres=gpu:v100:1" in flags and "--array=0-1" in flags
    assert "--dependency=afterok:7" in flags and "--kill-on-invalid-dep=yes" in flags
    assert "--signal=USR2@120" in flags and "--cpus-per-task=8" in flags


@pytest.mark.parametrize(
    "name, array, stage",
    [
        ("sbatch_pretrain.txt", None, {}),
        ("sbatch_finetune_array.txt", 2, {}),
        ("sbatch_finetune_throttled.txt", 5, {"max_running": 2}),  # --array=0-4%2
    ],
)
def test_sbatch_script_matches_golden_file(name, array, stage, tmp_path):
    res = slurm.resources_for_run({**PROFILE, **stage, "slurm": {**PROFILE["slurm"], "gres": "gpu:v100:1"}})
    dependency = "afterok:41" if array else None
    params = slurm.submitit_parameters(
        res, job_name="ioussl-s1-r7", comment="ioussl runs=7,8", dependency=dependency
    )
    folder = str(tmp_path.resolve() / "_submitit" / "%j")
    text = slurm.render_sbatch(params, folder, array_size=array).replace(str(tmp_path.resolve()), "RUNS")
    golden = GOLDEN / name
    if os.environ.get("IOUSSL_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_max_running_throttles_an_array_and_only_an_array():
    res = slurm.resources_for_run({**PROFILE, "max_running": 3})
    params = slurm.submitit_parameters(res, job_name="x")
    assert params["array_parallelism"] == 3
    assert "--array=0-9%3" in slurm.sbatch_flags(params, array_size=10)
    assert "--array=0-1%2" in slurm.sbatch_flags(params, array_size=2)  # never more slots than tasks
    assert not any(flag.startswith(("--array", "--array-parallelism")) for flag in slurm.sbatch_flags(params))
    unthrottled = slurm.submitit_parameters(slurm.resources_for_run(PROFILE), job_name="x")
    assert "array_parallelism" not in unthrottled and "--array=0-9" in slurm.sbatch_flags(unthrottled, 10)


@pytest.mark.parametrize(
    "fields, tasks",
    [
        ({}, 1),  # the thesis: one V100, one process
        ({"gpus": 4}, 4),  # one process per GPU
        ({"slurm": {"gres": "gpu:v100:2"}}, 2),  # the GPUs of a gres count too
        ({"gpus": 2, "nodes": 2}, 2),  # per node
        ({"gpus": 0}, 1),
        ({"gpus": 0, "tasks_per_node": 3}, 3),  # CPU processes (gloo): the tests' two-task jobs
        ({"gpus": 4, "tasks_per_node": 1}, 1),
    ],
)
def test_tasks_per_node_defaults_to_one_per_gpu(fields, tasks):
    res = slurm.resources_for_run({**PROFILE, **fields, "slurm": {**PROFILE["slurm"], **fields.get("slurm", {})}})
    assert res.tasks() == tasks


def test_a_job_of_several_processes_asks_for_them_per_node_and_ends_them_together(tmp_path):
    res = slurm.resources_for_run({**PROFILE, "gpus": 2, "nodes": 2})
    params = slurm.submitit_parameters(res, job_name="x")
    assert params["ntasks_per_node"] == 2 and params["srun_args"] == ["--kill-on-bad-exit=1"]
    flags = slurm.sbatch_flags(params)
    assert "--ntasks-per-node=2" in flags and "--nodes=2" in flags and "--gpus-per-node=2" in flags
    assert not any("kill-on-bad-exit" in flag for flag in flags)  # an srun option, not an sbatch one
    script = slurm.render_sbatch(params, str(tmp_path / "%j"))
    assert "#SBATCH --ntasks-per-node=2" in script and "srun --unbuffered" in script
    assert "--kill-on-bad-exit=1" in next(line for line in script.splitlines() if line.startswith("srun"))
    assert res.gpu_hours() == 4 * 24.0  # GPUs, not processes: 2 per node x 2 nodes
    cpu = slurm.submitit_parameters(slurm.resources_for_run({**PROFILE, "gpus": 0, "tasks_per_node": 2}), job_name="x")
    assert cpu["ntasks_per_node"] == 2 and "gpus_per_node" not in cpu
    one = slurm.submitit_parameters(slurm.resources_for_run(PROFILE), job_name="x")
    assert "ntasks_per_node" not in one and "srun_args" not in one  # one process: the script as before


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tasks_per_node": 0}, r"tasks_per_node: expected an integer >= 1, got 0"),
        ({"tasks_per_node": "2"}, r"tasks_per_node: expected an integer, got '2'"),
        ({"tasks_per_node": True}, r"tasks_per_node: expected an integer, got True"),
        ({"gpus": 2, "tasks_per_node": 4}, r"tasks_per_node: 4 processes per node but 2 GPU\(s\) per node; "
                                            r"multi-GPU training runs one process per GPU"),
    ],
)
def test_bad_tasks_per_node_is_one_line(change, message):
    with pytest.raises(ConfigError, match=message):
        slurm.resources_for_run({**PROFILE, **change})


def test_the_local_backend_runs_one_process_per_task(tmp_path):
    from ioussl.backends.base import Unit
    from ioussl.backends.local import LocalBackend

    unit = Unit(run_ids=("r1",), stage="pretrain", parent_id=None, job_name="ioussl-r1",
                resources=slurm.resources_for_run({**PROFILE, "gpus": 0, "tasks_per_node": 2}))  # fmt: skip
    assert "tasks_per_node=2" in LocalBackend(tmp_path).describe(unit, None)
