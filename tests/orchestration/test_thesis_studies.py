"""The two thesis study files: Table 4.2's replication runs the thesis' sampler, and the honest-split study is
the same grid on the thesis' 15 training cases with its 35 validation cases split 15 / 20, written by
`ioussl data split --cases --keep-train`."""

from __future__ import annotations

import dataclasses
import json

from typer.testing import CliRunner

from ioussl.cli import app
from ioussl.plan.expand import expand_grid
from ioussl.plan.study import load_study
from ioussl.science.data.splits import THESIS_SPLIT, load_split

SPLIT = "splits/flare22-thesis-train-15-val-15-test-20-seed0.json"


def test_the_replication_pretrains_with_the_thesis_algorithm_1(repo_root):
    runs = expand_grid(load_study(repo_root / "jobs" / "thesis.toml"))
    samplers = [r.config.sampler for r in runs if r.stage == "pretrain"]
    assert len(samplers) == 10
    assert all((s.mode, s.r1, s.r2) == ("algorithm1", 30, 4) for s in samplers)  # thesis §4.4: r1 30, r2 4


def test_the_test_split_study_is_the_thesis_grid_on_another_split(repo_root):
    thesis = expand_grid(load_study(repo_root / "jobs" / "thesis.toml"))
    honest = expand_grid(load_study(repo_root / "jobs" / "thesis-test-split.toml"))
    assert len(honest) == len(thesis) == 34
    for mine, theirs in zip(honest, thesis, strict=True):
        assert (mine.stage, mine.group, mine.seed, mine.pretrain_seed) == (
            theirs.stage, theirs.group, theirs.seed, theirs.pretrain_seed
        )  # fmt: skip
        assert mine.config.data.split == SPLIT and theirs.config.data.split == "splits/flare22-thesis.json"
        same_data = dataclasses.replace(mine.config.data, split=theirs.config.data.split)
        assert dataclasses.replace(mine.config, data=same_data) == theirs.config  # nothing else differs


def test_the_committed_test_split_keeps_the_thesis_training_cases(repo_root):
    """Issue 21.6: the models train on the thesis' 15 cases; its 35 validation cases become 15 + 20."""
    split = load_split(repo_root / "jobs" / SPLIT)
    assert {part: len(cases) for part, cases in split.items()} == {"train": 15, "val": 15, "test": 20}
    assert split["train"] == sorted(THESIS_SPLIT["train"])
    assert sorted(split["val"] + split["test"]) == sorted(THESIS_SPLIT["val"])


def test_data_split_rewrites_the_committed_file_from_the_thesis_case_list(repo_root, tmp_path):
    out = tmp_path / "split.json"
    args = ["data", "split", str(out), "--cases", str(repo_root / "jobs" / "splits" / "flare22-thesis.json"),
            "--keep-train", "--train", "15", "--val", "15", "--test", "20", "--seed", "0"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert out.read_text() == (repo_root / "jobs" / SPLIT).read_text()
    assert json.loads(out.read_text())["_comment"].startswith("the training cases of flare22-thesis.json")
    refused = CliRunner().invoke(app, [*args[:-8], "--train", "14", "--val", "15", "--test", "20"])
    assert refused.exit_code != 0 and "keeps the split's 15 training cases" in refused.output


def test_keep_train_without_a_count_is_one_line(repo_root, tmp_path):
    """--keep-train takes no default counts (they were None, and a missing --val crashed in make_split)."""
    split = str(repo_root / "jobs" / "splits" / "flare22-thesis.json")
    for counts in (["--val", "15"], ["--train", "15"]):
        result = CliRunner().invoke(app, ["data", "split", str(tmp_path / "s.json"), "--cases", split, "--keep-train",
                                          *counts])  # fmt: skip
        assert result.exit_code != 0 and isinstance(result.exception, SystemExit)  # no uncaught error
        assert "--keep-train needs --train" in result.output and "Traceback" not in result.output
        assert not (tmp_path / "s.json").exists()
