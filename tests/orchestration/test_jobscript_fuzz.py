"""Job-script fuzzing: hostile strings in every field that reaches the sbatch script are refused or quoted;
the rendered script (what submitit writes, slurm.render_sbatch) never runs a second command.

Each accepted script is executed by bash with a stand-in `srun` on PATH: it must call srun exactly once,
with exactly the expected arguments, and create nothing else (the fuzz strings try `touch PWNED`).
"""

from __future__ import annotations

import random
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from ioussl import jobtext as jobscript
from ioussl.backends import slurmtext as slurm
from ioussl.errors import ConfigError

PIECES = [
    "\n", "\r", "\r\n", "'", '"', "$(touch PWNED1)", "`touch PWNED2`", ";touch PWNED3", "&& touch PWNED4", "|",
    " ", "\\", "#", "\x00", "\x1b[2J", "\u2028", "\u0085", "\u202e", "\t", "é", "漢字", "🙂", "$HOME", "${IFS}",
    ">PWNED5", "<", "*", "=", "-", "--", "gpu", "a", "node[1-3]", "v100", "\\n", "'$(touch PWNED6)'",
]
FIELDS = ("partition", "account", "qos", "constraint", "exclude", "gres", "job_name", "folder", "additional key",
          "additional value", "comment")
PER_FIELD = 60
FAKE_SRUN = '#!/bin/sh\nprintf \'%s\\0\' "$@" >> "$SRUN_LOG"\nprintf \'END\\0\' >> "$SRUN_LOG"\n'


def fuzz_strings(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 6))) for _ in range(count)]


def render(field: str, value: str, folder: str) -> tuple[str, str]:
    """The script for a job whose ``field`` is ``value``; returns (script, folder)."""
    profile = {"partition": "gpu", "setup": ["module load CUDA"]}
    job_name, comment = "ioussl-abc123", "ioussl runs=abc123"
    if field in ("partition", "account", "qos", "constraint", "exclude", "gres"):
        profile[field] = value
    elif field == "additional key":
        profile["additional"] = {value: "x"}
    elif field == "additional value":
        profile["additional"] = {"mail-type": value}
    elif field == "job_name":
        job_name = value
    elif field == "comment":
        comment = value
    elif field == "folder":
        folder = f"{folder}/{value}/_submitit/%j"
        jobscript.check_path(folder, "folder")
    resources = slurm.resources_for_run({"slurm": profile, "gpus": 1, "time_min": 5})
    params = slurm.submitit_parameters(resources, job_name=job_name, comment=comment, dependency=None)
    return slurm.render_sbatch(params, folder), folder


def should_refuse(field: str, value: str) -> bool:
    if field == "additional key":
        return not jobscript.OPTION_NAME.fullmatch(value.lstrip("-"))
    return jobscript.control_character(value) is not None


def srun_calls(script: str, workdir: Path) -> tuple[int, list[list[str]]]:
    bin_dir, log = workdir.parent / "bin", workdir.parent / "srun.log"
    if not bin_dir.exists():
        bin_dir.mkdir()
        (bin_dir / "srun").write_text(FAKE_SRUN)
        (bin_dir / "srun").chmod(0o755)
    log.unlink(missing_ok=True)
    (workdir.parent / "job.sh").write_text(script)
    done = subprocess.run(
        ["bash", str(workdir.parent / "job.sh")], cwd=workdir, capture_output=True, timeout=20,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "SRUN_LOG": str(log), "HOME": str(workdir)},
    )
    raw = log.read_bytes().decode() if log.exists() else ""
    calls = [[a for a in call.split("\0") if a] for call in raw.split("END\0") if call]
    return done.returncode, calls


@pytest.mark.parametrize("field", FIELDS)
def test_hostile_strings_are_refused_or_quoted_never_run(field, tmp_path):
    from submitit.core.utils import JobPaths

    workdir = tmp_path / "work"
    workdir.mkdir()
    base = str(tmp_path / "runs")
    refused = accepted = 0
    valid_names = ["mail-type", "--mail-user", "begin", "x_1"] if field == "additional key" else []
    for value in fuzz_strings(seed=FIELDS.index(field), count=PER_FIELD) + valid_names:
        try:
            script, folder = render(field, value, base)
        except ConfigError as exc:
            assert should_refuse(field, value), f"{field}={value!r} refused needlessly: {exc}"
            assert "\n" not in str(exc)
            refused += 1
            continue
        assert not should_refuse(field, value), f"{field}={value!r} reached the script"
        accepted += 1
        assert_one_command(script)
        code, calls = srun_calls(script, workdir)
        stdout = str(JobPaths(folder=folder).stdout)
        expected = ["--unbuffered", "--output", stdout, "python", "-u", "-m", "submitit.core._submit", folder]
        assert code == 0 and calls == [expected], (field, value, calls)
        assert list(workdir.iterdir()) == [] and not list(tmp_path.rglob("PWNED*")), (field, value)
    assert refused and accepted  # both kinds were exercised
    shutil.rmtree(workdir)


def assert_one_command(script: str, setup: tuple[str, ...] = ("module load CUDA",)) -> None:
    """Structure: #SBATCH lines with one value each, the warning's delay and the setup lines, the export, one
    srun line."""
    commands = []
    for line in script.split("\n"):
        if line.startswith("#SBATCH "):
            option = line[len("#SBATCH "):]
            assert len(shlex.split(option)) == 1, line
        elif line and not line.startswith("#"):
            commands.append(line)
    assert commands[:-1] == ["export IOUSSL_SIGNAL_DELAY_S=120", *setup, "export SUBMITIT_EXECUTOR=slurm"]
    assert commands[-1].startswith("srun --unbuffered --output ")


def test_setup_lines_are_one_line_each_and_trusted(tmp_path):
    """Setup is shell by design (module load ...): a line is kept as written, but may not hold a newline."""
    resources = slurm.resources_for_run({"slurm": {"setup": ["module load CUDA/11.7", "source $HOME/env.sh"]}})
    assert resources.setup == ("module load CUDA/11.7", "source $HOME/env.sh")
    for bad in ("module load x\nrm -rf ~", "a\rb", "x\u2028y", "x\x00"):
        with pytest.raises(ConfigError, match="setup\\[1\\]: contains the control character"):
            slurm.resources_for_run({"slurm": {"setup": ["module load CUDA", bad]}})


@pytest.mark.parametrize(
    "name, ok",
    [("thesis", True), ("sweep-2026.01_a+b", True), ("é", False), ("a b", False), ("../x", False),
     ("evil;touch x", False), ("x" * 128, True), ("x" * 129, False), ("a\nb", False)],
)
def test_study_names_are_identifiers(name, ok):
    if ok:
        assert jobscript.check_study_name(name, "study") == name
    else:
        with pytest.raises(ConfigError, match="name must be 1-128"):
            jobscript.check_study_name(name, "study")


def test_the_last_gate_refuses_what_bypassed_the_resources_check():
    params = slurm.submitit_parameters(slurm.Resources(partition="gpu"), job_name="ioussl-x")
    with pytest.raises(ConfigError, match="control character"):
        jobscript.check_parameters({**params, "partition": "gpu\ntouch x"})
    with pytest.raises(ConfigError, match="not an sbatch option name"):
        jobscript.check_parameters({**params, "additional_parameters": {"a b": "x"}})
    with pytest.raises(ConfigError, match="control character"):
        slurm.submitit_parameters(slurm.Resources(partition="gpu"), job_name="ioussl-x\n")


def test_a_planned_runs_dir_with_shell_metacharacters_is_quoted(tmp_path):
    """Fuzzed study runs_dir through planning: refused with a control character, else quoted in the script."""
    from ioussl.plan.study import parse_study

    base = {"study": {"name": "fuzz"}, "finetune": {"baseline_seeds": [1]}, "data": {"crop": 64},
            "model": {"feature_size": 12}}
    for value in fuzz_strings(seed=11, count=40):
        raw = {**base, "study": {"name": "fuzz", "runs_dir": f"runs/{value}"}}
        try:
            spec = parse_study(raw, path=None, base_dir=tmp_path)
        except ConfigError:
            assert jobscript.control_character(value) is not None
            continue
        folder = str(spec.resolve(spec.runs_dir) / "_submitit" / "%j")
        params = slurm.submitit_parameters(slurm.resources_for_run(spec.resources["finetune"]), job_name="ioussl-x")
        assert_one_command(slurm.render_sbatch(params, folder), setup=())
