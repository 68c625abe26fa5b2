"""Job resources -> submitit/sbatch parameters, and a golden copy of the sbatch script submitit writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ioussl.errors import ConfigError
from ioussl.orchestration import slurm

GOLDEN = Path(__file__).parent / "golden"
PROFILE = {
    "partition": "gpu",
    "account": "plgssl",
    "qos": "normal",
    "constraint": "v100",
    "cpus_per_task": 8,
    "mem_gb": 32,
    "time_min": 1440,
    "extra": {"--mail-type": "FAIL"},
}


def test_study_settings_override_the_cluster_profile():
    res = slurm.resources_from(PROFILE, {"time-min": 600, "gres": "gpu:v100:1"})
    assert (res.partition, res.time_min, res.gres, res.extra) == (
        "gpu",
        600,
        "gpu:v100:1",
        {"mail-type": "FAIL"},
    )


@pytest.mark.parametrize(
    "layer, message",
    [
        ({"partitoin": "gpu"}, "unknown key 'partitoin'; valid keys: account"),
        ({"time_min": "1h"}, "time_min: expected an integer"),
        ({"cpus_per_task": 0}, "must be >= 1"),
        ({"extra": "--foo"}, "expected a table of sbatch options"),
    ],
)
def test_bad_resources_name_the_key(layer, message):
    with pytest.raises(ConfigError, match=message):
        slurm.resources_from(PROFILE, layer)


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
    res = slurm.resources_from(PROFILE)
    params = slurm.submitit_parameters(res, job_name="ioussl-r2", dependency="afterok:41")
    assert params["dependency"] == "afterok:41"
    assert params["additional_parameters"] == {"mail-type": "FAIL", "kill-on-invalid-dep": "yes"}
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


@pytest.mark.parametrize("name, array", [("sbatch_pretrain.txt", None), ("sbatch_finetune_array.txt", 2)])
def test_sbatch_script_matches_golden_file(name, array, tmp_path):
    res = slurm.resources_from(PROFILE, {"gres": "gpu:v100:1"})
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
