"""Canvas and Moodle bulk downloads in, their grade-import CSVs out.

The fixtures are zips named the way each LMS names them (see ``autograder/lms.py`` for the
source each rule was read from): several students, a resubmission, a late file, a student with
no notebook, a non-ASCII name, stray files. Expected scores are reasoned from what each notebook
contains (softmax 3, attention 3 + masks 2, additive 3 = 11 points), not from the grader.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import zipfile
from datetime import datetime
from pathlib import Path

import nbformat
import pytest

from autograder import lms
from autograder.report import Result
from notebook_tools import learner_notebook

ALL = {"softmax": "reference", "scaled_dot_product_attention": "reference", "additive_attention": "reference"}
SOFTMAX_ONLY = {"softmax": "reference"}
NO_SCALE = {"softmax": "reference", "scaled_dot_product_attention": '''
def scaled_dot_product_attention(q, k, v, mask=None):
    logits = q @ k.transpose(-2, -1)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    weights = softmax(logits, dim=-1)
    return weights @ v, weights
'''}


def _nb(answers) -> bytes:
    return nbformat.writes(learner_notebook("attention", answers)).encode()


def canvas_zip(path: Path) -> Path:
    """Canvas's flat "Download Submissions" zip: <lastfirst>[_LATE]_<user id>_<attachment id>_<file>."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("lovelaceada_48213_9912_attention.ipynb", _nb(ALL))
        zf.writestr("lovelaceada_48213_9917_notes.txt", "my notes")  # a stray non-notebook file
        zf.writestr("babbagecharles_LATE_48214_9913_attention.ipynb", _nb(NO_SCALE))  # late
        # Resubmission: Canvas renamed the re-uploaded file attention-1.ipynb; the old one is untouched.
        zf.writestr("hoppergrace_48215_9914_attention.ipynb", _nb({}))
        zf.writestr("hoppergrace_48215_9920_attention-1.ipynb", _nb(ALL))
        zf.writestr("żółćzoë_48216_9915_attention.ipynb", _nb(SOFTMAX_ONLY))  # "Żółć, Zoë", non-ASCII
        zf.writestr("turingalan_48217_9916_report.pdf", b"%PDF-1.4")  # no notebook
        zf.writestr("curiemarie_48218_text.html", "<p>I wrote it in the text box</p>")  # text entry only
        zf.writestr("README.txt", "grading notes")  # not a submission: maps to no student
    return path


def moodle_zip(path: Path) -> Path:
    """Moodle's "Download all submissions" zip, in folders (4.x and 3.x spellings) and flat."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("Ada Lovelace_1001_assignsubmission_file/attention.ipynb", _nb(ALL))
        zf.writestr("Ada Lovelace_1001_assignsubmission_onlinetext/onlinetext.html", "<p>done</p>")  # stray
        zf.writestr("Charles Babbage_1002_assignsubmission_file_/attention.ipynb", _nb(NO_SCALE))  # 3.x, late
        # Moodle keeps the latest attempt only: Grace resubmitted, and this is her second attempt.
        zf.writestr("Grace Hopper_1005_assignsubmission_file/attention.ipynb", _nb(ALL))
        zf.writestr("Zoë Żółć_1003_assignsubmission_file_attention.ipynb", _nb(SOFTMAX_ONLY))  # flat, non-ASCII
        zf.writestr("Alan Turing_1004_assignsubmission_file/report.pdf", b"%PDF-1.4")  # no notebook
        zf.writestr("__MACOSX/._attention.ipynb", b"\x00")  # re-zipped on a Mac: maps to no student
    return path


def moodle_worksheet(path: Path) -> Path:
    """Moodle's offline grading worksheet as downloaded, before grading."""
    rows = [["Identifier", "Full name", "Email address", "Status", "Grade", "Maximum Grade", "Grade can be changed",
             "Last modified (submission)", "Last modified (grade)", "Feedback comments"],
            ["Participant 1001", "Ada Lovelace", "ada@example.org", "Submitted for grading", "", "11", "Yes",
             "Monday, 1 December 2025, 9:00 AM", "-", ""],
            ["Participant 1002", "Charles Babbage", "cb@example.org", "Submitted for grading - 2 hours 5 mins late",
             "", "11", "Yes", "Monday, 1 December 2025, 2:05 PM", "-", ""]]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return path


# --------------------------------------------------------------------------- reading downloads (fast)

def test_canvas_download_maps_every_file_and_names_the_unmapped(tmp_path):
    d = lms.read_download("canvas", canvas_zip(tmp_path / "c.zip"), "attention", tmp_path / "scratch")
    assert sorted(d.students) == ["48213", "48214", "48215", "48216", "48217", "48218"]
    assert d.students["48216"].name == "żółćzoë"
    assert d.students["48214"].late and not d.students["48213"].late
    assert d.unmapped == ["README.txt: not named <name>_<user id>_<file id>_<file> as Canvas names submissions"]
    subs = {s.student_id: s for s in d.submissions("attention")}
    assert subs["48213"].notebook.name == "attention.ipynb" and subs["48213"].problem is None
    assert subs["48214"].note == "late: Canvas marked the submission late"
    assert "no notebook" in subs["48217"].problem and "report.pdf" in subs["48217"].problem
    assert "no notebook" in subs["48218"].problem and "text.html" in subs["48218"].problem


def test_canvas_resubmission_grades_the_newest_upload(tmp_path):
    d = lms.read_download("canvas", canvas_zip(tmp_path / "c.zip"), "attention", tmp_path / "scratch")
    sub = {s.student_id: s for s in d.submissions("attention")}["48215"]
    assert nbformat.read(sub.notebook, as_version=4) == learner_notebook("attention", ALL)
    assert sub.note == ("resubmission: graded attention-1.ipynb (Canvas's name for a re-uploaded attention.ipynb); "
                        "ignored the older attention.ipynb")


def test_moodle_download_maps_folder_and_flat_names(tmp_path):
    d = lms.read_download("moodle", moodle_zip(tmp_path / "m.zip"), "attention", tmp_path / "scratch")
    assert {sid: s.name for sid, s in d.students.items()} == {
        "1001": "Ada Lovelace", "1002": "Charles Babbage", "1003": "Zoë Żółć", "1004": "Alan Turing",
        "1005": "Grace Hopper"}
    assert d.unmapped == ["__MACOSX/._attention.ipynb: not named <Full Name>_<participant id>_assignsubmission_"
                          "<plugin> as Moodle names submissions"]
    subs = {s.student_id: s for s in d.submissions("attention")}
    assert subs["1003"].notebook.name == "attention.ipynb"
    assert subs["1001"].notebook.name == "attention.ipynb"  # the stray onlinetext.html is not a notebook
    assert "no notebook" in subs["1004"].problem


def test_moodle_worksheet_brings_lateness_and_emails(tmp_path):
    d = lms.read_download("moodle", moodle_zip(tmp_path / "m.zip"), "attention", tmp_path / "scratch",
                          worksheet=moodle_worksheet(tmp_path / "w.csv"))
    assert d.students["1002"].late and not d.students["1001"].late
    assert d.students["1001"].email == "ada@example.org"


def test_names_without_the_utf8_flag_are_recovered(tmp_path, monkeypatch):
    # Write the way an old zip tool does: UTF-8 bytes in the name, no UTF-8 flag (Python itself
    # would set the flag, so its name encoder is replaced for this write).
    monkeypatch.setattr(zipfile.ZipInfo, "_encodeFilenameFlags",
                        lambda self: (self.filename.encode("cp437"), self.flag_bits))
    path = tmp_path / "legacy.zip"
    utf8 = "Zoë Żółć_1003_assignsubmission_file/attention.ipynb".encode()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(zipfile.ZipInfo(utf8.decode("cp437")), _nb(SOFTMAX_ONLY))
    monkeypatch.undo()
    with zipfile.ZipFile(path) as zf:
        assert not zf.infolist()[0].flag_bits & 0x800
    d = lms.read_download("moodle", path, "attention", tmp_path / "scratch")
    assert d.students["1003"].name == "Zoë Żółć"


@pytest.mark.parametrize("kind, member, why", [
    ("moodle", "Eve Hacker_1_assignsubmission_file/../../escape.ipynb", "unsafe path"),
    ("moodle", "Eve Hacker_1_assignsubmission_file//etc/passwd", "unsafe path"),
    ("canvas", "evil_1_2_../../escape.ipynb", "a Canvas download is flat"),
])
def test_unsafe_members_are_not_unpacked(tmp_path, kind, member, why):
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, b"x")
    d = lms.read_download(kind, path, "attention", tmp_path / "scratch")
    assert why in " ".join(d.unmapped)
    assert not (tmp_path / "escape.ipynb").exists()
    assert not any(p.is_file() for p in (tmp_path / "scratch").rglob("*"))


def test_the_same_file_twice_for_one_student_is_an_error_not_a_silent_choice(tmp_path):
    path = tmp_path / "m.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("Ada Lovelace_1001_assignsubmission_file/attention.ipynb", _nb(ALL))
        zf.writestr("Ada Lovelace_1001_assignsubmission_file_attention.ipynb", _nb({}))
    sub = lms.read_download("moodle", path, "attention", tmp_path / "s").submissions("attention")[0]
    assert sub.problem == ("the download holds attention.ipynb more than once for this student; keep one copy of "
                           "each file and grade again")


def test_not_a_zip_is_a_clear_error(tmp_path):
    (tmp_path / "x.zip").write_text("not a zip")
    with pytest.raises(lms.DownloadError, match="could not be read as a zip"):
        lms.read_download("moodle", tmp_path / "x.zip", "attention", tmp_path / "s")


# --------------------------------------------------------------------------- import CSVs (fast, exact)

def _results():
    q = {"test_softmax": (3.0, 3.0, ""), "test_scaled_dot_product_attention": (0.0, 3.0, "your result equals "
         "attention without\nthe 1/√d_k scale")}
    return [Result("1001", "attention", 11.0, 11.0, "graded", questions={"test_softmax": (3.0, 3.0, "")}),
            Result("1002", "attention", 3.0, 11.0, "graded", questions=q),
            Result("1004", "attention", 0.0, 11.0, "error", "no notebook in the submission: expected attention.ipynb")]


def test_moodle_worksheet_csv_is_exact(tmp_path):
    download = lms.Download("moodle", tmp_path, {
        "1001": lms.LmsStudent("1001", "Ada Lovelace"), "1002": lms.LmsStudent("1002", "Charles Babbage"),
        "1004": lms.LmsStudent("1004", "Alan Turing")}, [])
    path = lms.write_import_csv(download, _results(), tmp_path / "m.csv", points=100,
                                graded_at=datetime(2025, 12, 1, 15, 30))
    assert path.read_bytes().decode() == (
        "Identifier,Full name,Email address,Status,Grade,Maximum Grade,Grade can be changed,"
        "Last modified (submission),Last modified (grade),Feedback comments\r\n"
        "Participant 1001,Ada Lovelace,,Submitted for grading,100,100,Yes,-,\"Monday, 01 December 2025, 03:30 PM\","
        "Score 11/11. test_softmax: passed.\r\n"
        "Participant 1002,Charles Babbage,,Submitted for grading,27.27,100,Yes,-,"
        "\"Monday, 01 December 2025, 03:30 PM\","
        "Score 3/11. test_softmax: passed; test_scaled_dot_product_attention: 0/3 (your result equals attention "
        "without the 1/√d_k scale).\r\n"
        "Participant 1004,Alan Turing,,Submitted for grading,,100,Yes,-,\"Monday, 01 December 2025, 03:30 PM\","
        "Not graded: no notebook in the submission: expected attention.ipynb\r\n")


def test_canvas_gradebook_csv_is_exact(tmp_path):
    download = lms.Download("canvas", tmp_path, {
        "1001": lms.LmsStudent("1001", "lovelaceada"), "1002": lms.LmsStudent("1002", "babbagecharles"),
        "1004": lms.LmsStudent("1004", "turingalan")}, [])
    path = lms.write_import_csv(download, _results(), tmp_path / "c.csv", column="Attention (4567)")
    assert path.read_bytes().decode() == (
        "Student,ID,SIS User ID,SIS Login ID,Section,Attention (4567)\r\n"
        "Points Possible,,,,,11\r\n"
        "lovelaceada,1001,,,,11\r\n"
        "babbagecharles,1002,,,,3\r\n"
        "turingalan,1004,,,,\r\n")


def test_learner_text_in_the_csv_cannot_become_a_formula(tmp_path):
    download = lms.Download("moodle", tmp_path, {
        "1009": lms.LmsStudent("1009", '=HYPERLINK("http://x","y")', email="@evil\nline")}, [])
    result = Result("1009", "attention", 3.0, 11.0, "graded", questions={"test_softmax": (0.0, 3.0, "-1 is\nwrong")})
    path = lms.write_import_csv(download, [result], tmp_path / "m.csv", graded_at=datetime(2025, 12, 1, 15, 30))
    with open(path, encoding="utf-8") as f:
        row = list(csv.DictReader(f))[0]
    assert row["Full name"] == "'=HYPERLINK(\"http://x\",\"y\")"
    assert row["Email address"] == "'@evil line"
    assert row["Feedback comments"] == "Score 3/11. test_softmax: 0/3 (-1 is wrong)."


def test_report_shows_unmapped_file_names_as_plain_text(tmp_path):
    from autograder.report import write_report

    write_report([], "attention", tmp_path / "report.md", None,
                 run_notes=["# Fake heading](http://x)<script>alert(1)</script>\n## Grades: all 100: not named ..."])
    report = (tmp_path / "report.md").read_text()
    section = report.split("## Files that map to no student\n\n", 1)[1]
    assert section.count("\n") == 1 and section.startswith("- \\# Fake heading\\]\\(http:\\//x\\)&lt;script&gt;")
    assert "\n## Grades" not in report and "<script>" not in report


# --------------------------------------------------------------------------- the grading command (slow)

def _grade(tmp_path: Path, lms_kind: str, archive: Path, *extra: str):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", "attention", str(archive), "--out", str(out),
                           "--lms", lms_kind, "--quiet", *extra], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "grades.csv", encoding="utf-8") as f:
        rows = {r["student_id"]: r for r in csv.DictReader(f)}
    return proc, rows, out


@pytest.mark.slow
def test_grade_canvas_download_end_to_end(tmp_path):
    proc, rows, out = _grade(tmp_path, "canvas", canvas_zip(tmp_path / "canvas.zip"),
                             "--lms-column", "Attention (4567)")
    assert {sid: (float(r["score"]), r["status"]) for sid, r in rows.items()} == {
        "48213": (11, "graded"), "48214": (3, "graded"), "48215": (11, "graded"), "48216": (3, "graded"),
        "48217": (0, "error"), "48218": (0, "error")}
    assert "not mapped: README.txt" in proc.stderr
    assert (out / "canvas-import.csv").read_bytes().decode() == (
        "Student,ID,SIS User ID,SIS Login ID,Section,Attention (4567)\r\n"
        "Points Possible,,,,,11\r\n"
        "lovelaceada,48213,,,,11\r\n"
        "babbagecharles,48214,,,,3\r\n"
        "hoppergrace,48215,,,,11\r\n"
        "żółćzoë,48216,,,,3\r\n"
        "turingalan,48217,,,,\r\n"
        "curiemarie,48218,,,,\r\n")
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Late submissions\n\n- **48214**: late: Canvas marked the submission late" in report
    assert "## Files that map to no student\n\n- README.txt: not named &lt;name&gt;" in report  # escaped: learner text
    assert "resubmission: graded attention-1.ipynb" in rows["48215"]["message"]


@pytest.mark.slow
def test_grade_moodle_download_end_to_end(tmp_path):
    proc, rows, out = _grade(tmp_path, "moodle", moodle_zip(tmp_path / "moodle.zip"), "--lms-points", "100",
                             "--lms-worksheet", str(moodle_worksheet(tmp_path / "worksheet.csv")))
    assert {sid: (float(r["score"]), r["status"]) for sid, r in rows.items()} == {
        "1001": (11, "graded"), "1002": (3, "graded"), "1003": (3, "graded"), "1004": (0, "error"),
        "1005": (11, "graded")}
    with open(out / "moodle-import.csv", encoding="utf-8") as f:
        imported = list(csv.DictReader(f))
    assert [(r["Identifier"], r["Full name"], r["Email address"], r["Grade"], r["Maximum Grade"])
            for r in imported] == [
        ("Participant 1001", "Ada Lovelace", "ada@example.org", "100", "100"),
        ("Participant 1002", "Charles Babbage", "cb@example.org", "27.27", "100"),
        ("Participant 1003", "Zoë Żółć", "", "27.27", "100"),
        ("Participant 1004", "Alan Turing", "", "", "100"),
        ("Participant 1005", "Grace Hopper", "", "100", "100")]
    comments = {r["Identifier"]: r["Feedback comments"] for r in imported}
    assert comments["Participant 1001"].startswith("Score 11/11. test_softmax: passed;")
    assert "without the 1/√d_k scale" in comments["Participant 1002"]
    assert comments["Participant 1004"].startswith("Not graded: no notebook in the submission")
    assert "\n" not in "".join(comments.values())  # one line each
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "- **1002**: late: Moodle marked the submission late" in report
