"""The JSONL results file: append, resume status, crash repair, --retry-failed, --overwrite."""

from __future__ import annotations

import json

import pytest

from pali_cli.errors import CliError
from pali_cli.records import Record, make_key
from pali_cli.results import ResultsFile
from pali_cli.streams import TextStream


def rec(image: str, text: str | None = "a cat", error: str | None = None, **kw) -> Record:
    return Record(image=image, task="caption", prompt="caption en", preset="p", text=text, error=error, **kw)


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def warnings():
    return []


def test_records_are_one_json_object_per_line_with_the_documented_fields(tmp_path, warnings):
    out = ResultsFile(tmp_path / "sub" / "out.jsonl", warnings.append)  # parent dirs are created
    out.write(rec("a.jpg", text="un chat\nsur un canapé", tokens=7, finish_reason="stop", seconds=0.12345))
    out.write(rec("b.jpg", text=None, error="cannot load image b.jpg: empty", extra={"x": 1}))
    out.close()
    raw = (tmp_path / "sub" / "out.jsonl").read_text(encoding="utf-8")
    assert raw.count("\n") == 2 and "canapé" in raw  # UTF-8 kept readable, inner newline escaped
    first, second = lines(tmp_path / "sub" / "out.jsonl")
    assert list(first) == [
        "image",
        "path",
        "task",
        "prompt",
        "preset",
        "text",
        "tokens",
        "finish_reason",
        "seconds",
        "error",
    ]
    assert first["text"] == "un chat\nsur un canapé" and first["seconds"] == 0.123 and first["error"] is None
    assert second["error"] == "cannot load image b.jpg: empty" and second["text"] is None and second["x"] == 1
    assert warnings == []


def test_reopening_reports_done_and_failed_images(tmp_path, warnings, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "out.jsonl"
    out = ResultsFile(path, warnings.append)
    out.write(rec("a.jpg"))
    out.write(rec("b.jpg", text=None, error="broken"))
    out.close()
    again = ResultsFile(path, warnings.append)
    # Keys compare absolute paths, so ./a.jpg and the absolute spelling are the same image.
    assert again.status[make_key("./a.jpg", "caption", "caption en", "p")] is True
    assert again.status[make_key(str(tmp_path / "b.jpg"), "caption", "caption en", "p")] is False
    assert make_key("a.jpg", "caption", "caption fr", "p") not in again.status


def test_a_truncated_last_line_from_a_killed_run_is_cut_off(tmp_path, warnings):
    path = tmp_path / "out.jsonl"
    whole = rec("a.jpg").to_line()
    path.write_text(whole + rec("b.jpg").to_line()[:25], encoding="utf-8")
    out = ResultsFile(path, warnings.append)
    assert path.read_text(encoding="utf-8") == whole
    assert len(out.status) == 1
    assert any("incomplete last record" in w for w in warnings)
    out.write(rec("b.jpg"))
    out.close()
    assert [r["image"] for r in lines(path)] == ["a.jpg", "b.jpg"]


def test_a_whole_last_record_without_newline_is_kept(tmp_path, warnings):
    path = tmp_path / "out.jsonl"
    path.write_text(rec("a.jpg").to_line().rstrip("\n"), encoding="utf-8")
    out = ResultsFile(path, warnings.append)
    out.write(rec("b.jpg"))
    out.close()
    assert [r["image"] for r in lines(path)] == ["a.jpg", "b.jpg"]
    assert warnings == []


def test_foreign_lines_are_left_alone_and_reported(tmp_path, warnings):
    path = tmp_path / "out.jsonl"
    text = rec("a.jpg").to_line() + "not json\n" + json.dumps({"hello": 1}) + "\n"
    path.write_text(text, encoding="utf-8")
    out = ResultsFile(path, warnings.append)
    assert len(out.status) == 1
    assert len(warnings) == 1 and "2 line(s)" in warnings[0]
    assert path.read_text(encoding="utf-8") == text


def test_drop_failed_removes_only_the_error_records_of_the_given_keys(tmp_path, warnings):
    path = tmp_path / "out.jsonl"
    out = ResultsFile(path, warnings.append)
    for r in (rec("a.jpg"), rec("b.jpg", text=None, error="x"), rec("c.jpg", text=None, error="y"), rec("d.jpg")):
        out.write(r)
    out.close()
    out = ResultsFile(path, warnings.append)
    wanted = {rec(n).key for n in ("a.jpg", "b.jpg", "d.jpg")}  # c.jpg is not part of this run
    assert out.drop_failed(wanted) == 1
    assert [r["image"] for r in lines(path)] == ["a.jpg", "c.jpg", "d.jpg"]
    assert rec("b.jpg").key not in out.status and out.status[rec("c.jpg").key] is False


def test_clear_empties_the_file_when_the_first_new_record_comes(tmp_path, warnings):
    path = tmp_path / "out.jsonl"
    path.write_text(rec("a.jpg").to_line() + rec("b.jpg").to_line(), encoding="utf-8")
    out = ResultsFile(path, warnings.append)
    out.clear()
    assert out.status == {}
    assert len(lines(path)) == 2  # nothing new yet (the model may still fail to load): kept
    out.write(rec("c.jpg"))
    out.write(rec("d.jpg"))
    out.close()
    assert [r["image"] for r in lines(path)] == ["c.jpg", "d.jpg"]


def test_a_directory_as_output_is_refused_with_a_hint(tmp_path, warnings):
    with pytest.raises(CliError, match="is a directory"):
        ResultsFile(tmp_path, warnings.append)


def test_an_unwritable_output_is_one_clear_error_found_when_it_is_opened(tmp_path, warnings):
    (tmp_path / "file").write_text("a regular file, so nothing can be created below it")
    with pytest.raises(CliError, match="cannot write .*out.jsonl"):  # before any model loads
        ResultsFile(tmp_path / "file" / "out.jsonl", warnings.append)


def test_text_stream_prints_nothing_when_the_task_has_nothing_to_show(capsys):
    stream = TextStream(lambda record: None)  # e.g. detect found no object
    stream.write(rec("a.jpg"))
    TextStream(lambda record: record.text).write(rec("b.jpg", text="a dog"))
    assert capsys.readouterr().out == "a dog\n"
