"""`ioussl data synth|preprocess|split` and `ioussl analyze pairs` end to end, and their bad-input errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from ioussl.cli import app

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_synth_preprocess_split_analyze(tmp_path):
    raw, store = tmp_path / "raw", tmp_path / "store"
    result = _invoke("data", "synth", raw, "--cases", 3, "--unlabelled", 1, "--seed", 2, "--size", 112)
    assert result.exit_code == 0, result.output
    assert len(list((raw / "images").glob("*_0000.nii.gz"))) == 3
    result = _invoke("data", "preprocess", raw, store)
    assert result.exit_code == 0, result.output
    assert "4 done, 0 already done, 0 failed" in result.output
    assert "0 done, 4 already done" in _invoke("data", "preprocess", raw, store).output  # resume
    split = tmp_path / "split.json"
    result = _invoke("data", "split", split, "--store", store, "--train", 1, "--val", 1, "--test", 1)
    assert result.exit_code == 0, result.output
    assert {k: len(v) for k, v in json.loads(split.read_text()).items() if k != "_comment"} == {
        "train": 1, "val": 1, "test": 1,
    }  # fmt: skip
    png = tmp_path / "pairs.png"
    result = _invoke("analyze", "pairs", store, "--split", split, "--part", "val", "--passes", 1,
                     "--interval", "0.3,0.6", "--interval", "0.6,1", "--plot", png,
                     "--json", tmp_path / "pairs.json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "[0.3, 0.6]" in result.output and "[0.6, 1]" in result.output and png.is_file()
    rows = json.loads((tmp_path / "pairs.json").read_text())
    assert [(r["i_min"], r["i_max"]) for r in rows] == [(0.3, 0.6), (0.6, 1.0)]
    assert all(r["fraction"] is None or 0.0 <= r["fraction"] <= 1.0 for r in rows)
    # the report plots exactly this file (thesis Fig. 3.2)
    from ioussl.orchestration.plots import plot_pairs, read_pairs

    assert plot_pairs(read_pairs(tmp_path / "pairs.json"), tmp_path / "fig.png").stat().st_size > 1000


def test_preprocess_lists_failures_and_exits_nonzero(tmp_path):
    raw = tmp_path / "raw"
    assert _invoke("data", "synth", raw, "--cases", 2, "--unlabelled", 0).exit_code == 0
    (raw / "images" / "SYN_Tr_0002_0000.nii.gz").write_bytes(b"garbage")
    result = _invoke("data", "preprocess", raw, tmp_path / "store")
    assert result.exit_code == 1
    assert "1 done, 0 already done, 1 failed" in result.output
    assert (
        "failed SYN_Tr_0002:" in result.output
        and "SYN_Tr_0002_0000.nii.gz: cannot read NIfTI" in result.output
    )
    assert "Traceback" not in result.output


def test_bad_input_is_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    for args, message in [
        (("data", "preprocess", tmp_path / "empty", tmp_path / "s"), "no cases found"),
        (("data", "preprocess", tmp_path / "nope", tmp_path / "s"), "input folder does not exist"),
        (("analyze", "pairs", tmp_path / "empty"), "not a slice store"),
        (("data", "split", tmp_path / "x.json"), "give --store"),
        (("data", "synth", tmp_path / "o", "--cases", 0, "--unlabelled", 0), "at least one case"),
    ]:
        result = _invoke(*args)
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert lines[-1].startswith("error: ") and message in lines[-1], result.output
        assert "Traceback" not in result.output


def test_thesis_split_written(tmp_path):
    out = tmp_path / "thesis.json"
    assert _invoke("data", "split", out, "--thesis").exit_code == 0
    body = json.loads(out.read_text())
    assert len(body["train"]) == 15 and len(body["val"]) == 35
