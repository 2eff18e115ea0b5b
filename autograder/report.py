"""What the instructor reads after a run: grades.csv, a score-distribution plot, report.md.

Every text field may hold learner-controlled text (error messages, file names), so each
writer passes it through :mod:`autograder.learner_text`: the writers never fail on it
and never let it act as markup or as a spreadsheet formula.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from autograder.learner_text import csv_cell, markdown_inline


@dataclass
class Result:
    """One row of grades.csv, plus per-question details for the report."""

    student_id: str
    assignment: str
    score: float
    max_score: float
    status: str  # "graded" or "error"
    message: str = ""

    # not in the CSV:
    questions: dict | None = None  # test grade_id -> (points earned, points possible, failure message)
    banned: bool = False
    late: str = ""  # "late: submitted … after the due date", from nbgrader's timestamps or the LMS
    rereads: dict | None = None  # failed test grade_id -> the book section to reread: “heading” (chapter N, title)


CSV_FIELDS = [f.name for f in fields(Result) if f.name not in ("questions", "banned", "late", "rereads")]
CSV_MESSAGE_CHARS = 2000
REPORT_MESSAGE_CHARS = 300


def write_csv(results: list[Result], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    # errors="replace": the cells are already clean; this is the last line of defence.
    with open(tmp, "w", newline="", encoding="utf-8", errors="replace") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in sorted(results, key=lambda r: str(r.student_id)):
            row = {k: csv_cell(v, CSV_MESSAGE_CHARS) for k, v in asdict(r).items() if k in CSV_FIELDS}
            row["score"], row["max_score"] = f"{r.score:g}", f"{r.max_score:g}"
            writer.writerow(row)
    tmp.replace(path)  # never leave a half-written grades.csv


def plot_distribution(results: list[Result], path: Path) -> Path | None:
    """One panel per question: how many students earned each score. None when nothing was graded."""
    graded = [r for r in results if r.status == "graded" and r.questions]
    if not graded:
        return None
    # matplotlib's object API, imported here: no pyplot state, no backend to select, and the
    # grader's processes that never draw (its workers) do not pay for importing it.
    from matplotlib.figure import Figure

    questions = list(graded[0].questions)
    fig = Figure(figsize=(3.2 * (len(questions) + 1), 3))
    axes = fig.subplots(1, len(questions) + 1, squeeze=False)
    for ax, q in zip(axes[0], questions):
        possible = graded[0].questions[q][1]
        earned = Counter(r.questions[q][0] for r in graded if q in r.questions)
        xs = sorted(set(earned) | {0.0, possible})
        ax.bar([f"{x:g}" for x in xs], [earned.get(x, 0) for x in xs], color="tab:blue")
        ax.set_title(q, fontsize=9)
        ax.set_xlabel(f"points (of {possible:g})")
    ax = axes[0][-1]
    ax.hist([r.score for r in graded], bins=min(10, max(2, len(graded))), color="tab:green")
    ax.set_title("total score", fontsize=9)
    axes[0][0].set_ylabel("students")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def write_report(results: list[Result], assignment: str, path: Path, plot: Path | None,
                 run_notes: list[str] | tuple[str, ...] = (), machine_notes: list[str] | tuple[str, ...] = ()) -> None:
    """``report.md``: counts, score summary, per-question pass rates, errors, late submissions,
    files that mapped to no student (``run_notes``) and notes. Every student id and message is
    one escaped, length-capped line (see ``learner_text``)."""
    text = markdown_inline
    graded = [r for r in results if r.status == "graded"]
    errors = [r for r in results if r.status == "error"]
    lines = [f"# Grading report: {text(assignment)}", ""]
    lines.append(f"{len(results)} submissions: {len(graded)} graded, {len(errors)} errors, "
                 f"{sum(r.banned for r in results)} with banned calls (scored 0 on those questions).")
    if graded:
        scores = sorted(r.score for r in graded)
        half = len(scores) // 2
        mid = scores[half] if len(scores) % 2 else (scores[half - 1] + scores[half]) / 2
        lines += ["", f"Score (of {graded[0].max_score:g}): mean {sum(scores) / len(scores):.2f}, median {mid:g}, "
                  f"min {scores[0]:g}, max {scores[-1]:g}."]
    if graded and graded[0].questions:
        lines += ["", "| question | points | passed | most common failure | section to reread (most often) |",
                  "|---|---|---|---|---|"]
        for q, (_, possible, _) in graded[0].questions.items():
            passed = sum(1 for r in graded if r.questions and r.questions[q][0] == possible)
            failures = Counter(_short(r.questions[q][2]) for r in graded if r.questions and r.questions[q][2])
            common = f"{text(failures.most_common(1)[0][0])} ({failures.most_common(1)[0][1]})" if failures else ""
            sections = Counter(r.rereads[q] for r in graded if r.rereads and r.rereads.get(q))
            section = f"{text(sections.most_common(1)[0][0])} ({sections.most_common(1)[0][1]})" if sections else ""
            lines.append(f"| {text(q)} | {possible:g} | {passed}/{len(graded)} | {common} | {section} |")
    if plot:
        lines += ["", f"![score distribution]({plot.name})"]
    if errors:
        lines += ["", "## Submissions that could not be graded", ""]
        lines += [f"- **{text(r.student_id)}**: {text(r.message, REPORT_MESSAGE_CHARS)}" for r in errors]
    late = [r for r in results if r.late]
    if late:
        lines += ["", "## Late submissions", ""]
        lines += [f"- **{text(r.student_id)}**: {text(r.late, REPORT_MESSAGE_CHARS)}" for r in late]
    if machine_notes:  # ours: guarantees that hold only in a weaker form on this machine
        lines += ["", "## This machine", ""]
        lines += [f"- {text(note, REPORT_MESSAGE_CHARS)}" for note in machine_notes]
    if run_notes:  # file names from an LMS download: learner text
        lines += ["", "## Files that map to no student", ""]
        lines += [f"- {text(note, REPORT_MESSAGE_CHARS)}" for note in run_notes]
    flagged = [r for r in results if r.banned or (r.status == "graded" and r.message)]
    if flagged:
        lines += ["", "## Notes on graded submissions", ""]
        lines += [f"- **{text(r.student_id)}**: {text(r.message, REPORT_MESSAGE_CHARS)}" for r in flagged]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="replace")


def _short(message: str) -> str:
    """The diagnosis part of a failure message (the caller escapes it)."""
    message = str(message)
    if ": " in message and "(" in message.split(": ", 1)[0]:
        message = message.split(": ", 1)[1]  # drop the call description, keep the diagnosis
    return message[:140]
