"""Start-up honesty (#15, "where a guarantee cannot hold on some platform, the grader says so at
start-up"): a guarantee of grading-threat-model.md that holds only in a weaker form on this machine
is one line when the grader starts, and again in the report; where it holds as stated, nothing."""

from __future__ import annotations

from autograder import sandbox
from autograder.report import write_report


def test_user_namespace_mode_names_its_weaker_process_limit(monkeypatch):
    monkeypatch.setattr(sandbox, "platform_mode", lambda: "user")
    [line] = [c for c in sandbox.platform_caveats() if "ordinary user" in c]
    assert "process limit" in line and str(sandbox.Limits().processes) in line and "\n" not in line


def test_root_mode_on_a_supported_machine_says_nothing(monkeypatch):
    monkeypatch.setattr(sandbox, "platform_mode", lambda: "root")
    monkeypatch.setattr(sandbox.os, "uname", lambda: type("U", (), {"machine": "x86_64"})())
    assert sandbox.platform_caveats() == []


def test_a_machine_without_a_seccomp_architecture_says_so(monkeypatch):
    monkeypatch.setattr(sandbox, "platform_mode", lambda: "root")
    monkeypatch.setattr(sandbox.os, "uname", lambda: type("U", (), {"machine": "riscv64"})())
    [line] = sandbox.platform_caveats()
    assert line.startswith("on riscv64")


def test_the_report_repeats_the_notes(tmp_path):
    write_report([], "attention", tmp_path / "report.md", None,
                 machine_notes=["grading as an ordinary user: processes count against your process limit"])
    text = (tmp_path / "report.md").read_text()
    assert "## This machine" in text and "- grading as an ordinary user" in text


def test_the_command_prints_the_notes_before_grading(monkeypatch, tmp_path, capsys):
    from autograder import cli, grading

    monkeypatch.setattr(sandbox, "platform_caveats", lambda: ["a weaker guarantee here"])
    seen = {}

    def fake_grade_class(*args, **kwargs):  # the printed line must come before anyone is graded
        assert capsys.readouterr().err == ""  # not before the checks (a refusal is one line) ...
        kwargs["announce"]()  # ... but once they pass, before the canary (test_intake)
        seen["printed"] = capsys.readouterr().err
        seen["machine_notes"] = kwargs.get("machine_notes")
        return []

    monkeypatch.setattr(grading, "grade_class", fake_grade_class)
    (tmp_path / "subs").mkdir()
    cli.main(["grade", "attention", str(tmp_path / "subs"), "--out", str(tmp_path / "out")])
    assert "note: a weaker guarantee here" in seen["printed"]
    assert seen["machine_notes"] == ["a weaker guarantee here"]
