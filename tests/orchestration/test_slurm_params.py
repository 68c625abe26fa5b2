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
    assert params["setup"] == ["module load CUDA/11.7"]
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
