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
    from ioussl.report.plots import plot_pairs, read_pairs

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
    (tmp_path / "afile").write_text("a file where the store's folder should go")
    for args, message in [
        (("data", "preprocess", tmp_path / "empty", tmp_path / "s"), "no cases found"),
        (("data", "preprocess", tmp_path / "nope", tmp_path / "s"), "input folder does not exist"),
        (("data", "preprocess", tmp_path, tmp_path / "afile" / "store"), "afile is a file, not a folder"),
        (("analyze", "pairs", tmp_path / "empty"), "not a slice store"),
        (("data", "split", tmp_path / "x.json"), "give either --store"),
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


def test_split_a_list_of_cases_without_a_store(tmp_path):
    listing = tmp_path / "cases.txt"
    listing.write_text("# the labelled cases\n" + "\n".join(f"CASE_{i:02d}" for i in range(10)) + "\n\n")
    out = tmp_path / "split.json"
    result = _invoke("data", "split", out, "--cases", listing, "--train", 4, "--val", 3, "--test", 3, "--seed", 1)
    assert result.exit_code == 0, result.output
    split = json.loads(out.read_text())
    assert split["_comment"] == "seeded split (seed 1) of the 10 cases of cases.txt"
    parts = [split[p] for p in ("train", "val", "test")]
    assert [len(p) for p in parts] == [4, 3, 3] and sorted(sum(parts, [])) == [f"CASE_{i:02d}" for i in range(10)]
    shuffled = tmp_path / "shuffled.txt"
    shuffled.write_text("\n".join(f"CASE_{i:02d}" for i in reversed(range(10))))
    again = tmp_path / "again.json"
    _invoke("data", "split", again, "--cases", shuffled, "--train", 4, "--val", 3, "--test", 3, "--seed", 1)
    assert {k: v for k, v in json.loads(again.read_text()).items() if k != "_comment"} == {
        k: v for k, v in split.items() if k != "_comment"
    }  # the listing's order does not matter


def test_split_rejects_bad_case_lists_in_one_line(tmp_path):
    twice, spaced = tmp_path / "twice.txt", tmp_path / "spaced.txt"
    twice.write_text("A\nB\nA\n")
    spaced.write_text("A\nB C\n")
    two = tmp_path / "two.txt"
    two.write_text("A\nB\n")
    store = tmp_path / "store"
    for args, message in [
        (["--cases", twice], "twice.txt: case 'A' is listed more than once"),
        (["--cases", spaced], "spaced.txt: 'B C' is not a case id"),
        (["--cases", tmp_path / "none.txt"], "none.txt: cannot read the case list"),
        (["--cases", twice, "--store", store], "give either --store"),
        ([], "give either --store"),
        (["--cases", two, "--train", 2, "--val", 2], "cannot split 2 case(s) into train 2 + val 2 + test 0: "
                                                      "choose --train, --val (and --test) of at least 1 that add up "
                                                      "to at most 2"),
    ]:
        result = _invoke("data", "split", tmp_path / "out.json", *args)
        assert result.exit_code == 1 and message in result.output, (args, result.output)
        assert result.output.count("\n") == 1 and "Traceback" not in result.output


def test_split_defaults_fit_a_small_store_instead_of_failing(tmp_path):
    cases = tmp_path / "ten.txt"
    cases.write_text("\n".join(f"CASE_{i:02d}" for i in range(10)))
    out = tmp_path / "small.json"
    result = _invoke("data", "split", out, "--cases", cases, "--test", 2)  # no --train/--val: 30% of 8, the rest
    assert result.exit_code == 0, result.output
    parts = json.loads(out.read_text())
    assert (len(parts["train"]), len(parts["val"]), len(parts["test"])) == (2, 6, 2)
