"""Progress across the course: ``qkv progress [FOLDER]``.

For each chapter, the learner's notebook ``FOLDER/<ch>/<ch>.ipynb`` is self-checked like
``qkv check`` does (a subprocess per chapter, with timeouts); a chapter whose notebook is
missing counts as not attempted. The result is a table and a saved figure: a grid of
chapters × functions coloured by status.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from qkv.chapters import CHAPTERS
from qkv.selfcheck import DEFAULT_STEP_TIMEOUT, Report, check_notebook, graded_functions

COLOURS = {"passed": "#2da44e", "failing": "#cf222e", "not attempted": "#d0d7de"}


@dataclass
class Progress:
    """Every chapter's functions with their status, in course order."""

    folder: Path
    chapters: list[tuple[str, Report, bool]]  # (slug, report, notebook found)

    def statuses(self) -> dict[str, dict[str, str]]:
        """chapter -> function -> status."""
        return {slug: report.status_of() for slug, report, _ in self.chapters}

    def to_text(self) -> str:
        lines = [f"qkv progress {self.folder}", ""]
        total = {s: 0 for s in ("passed", "failing", "not attempted")}
        for slug, report, found in self.chapters:
            counts = {s: sum(r.status == s for r in report.results) for s in total}
            for s in total:
                total[s] += counts[s]
            where = "" if found else "  (no notebook: not started)"
            lines.append(f"{slug}: {counts['passed']}/{len(report.results)} passed{where}")
            for r in report.results:
                lines.append(f"    {r.function:<32} {r.status}")
            lines.extend(f"    note: {n}" for n in report.notes)
        n = sum(total.values())
        lines += ["", f"total: {total['passed']} passed, {total['failing']} failing, "
                      f"{total['not attempted']} not attempted, of {n} functions"]
        return "\n".join(lines)

    def figure(self, path: Path) -> Path:
        """Save a chapters × functions grid coloured by status to ``path``; return it."""
        import matplotlib

        matplotlib.use("Agg")  # a file is all we need; works without a display
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch, Rectangle

        width = max(len(r.results) for _, r, _ in self.chapters)
        fig, ax = plt.subplots(figsize=(2.1 * width + 1.8, 0.6 * len(self.chapters) + 1.6))
        for row, (_, report, _) in enumerate(self.chapters):
            for col, r in enumerate(report.results):
                ax.add_patch(Rectangle((col, row), 0.96, 0.9, color=COLOURS[r.status]))
                ax.text(col + 0.48, row + 0.45, r.function, ha="center", va="center", fontsize=8.5,
                        color="white" if r.status != "not attempted" else "#24292f")
        ax.set_xlim(0, width)
        ax.set_ylim(len(self.chapters), 0)
        ax.set_yticks([i + 0.45 for i in range(len(self.chapters))])
        ax.set_yticklabels([slug for slug, _, _ in self.chapters])
        ax.set_xticks([])
        for side in ("top", "right", "bottom", "left"):
            ax.spines[side].set_visible(False)
        ax.set_title(f"qkv progress: {self.folder}", fontsize=10)
        ax.legend(handles=[Patch(color=c, label=s) for s, c in COLOURS.items()], loc="upper center",
                  bbox_to_anchor=(0.5, -0.02), ncol=3, frameon=False)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def progress(folder: Path, *, step_timeout: float = DEFAULT_STEP_TIMEOUT, workers: int = 2) -> Progress:
    """Self-check every chapter's notebook under ``folder`` (``<ch>/<ch>.ipynb``)."""
    folder = Path(folder)

    def one(slug: str) -> tuple[str, Report, bool]:
        nb = folder / slug / f"{slug}.ipynb"
        if not nb.exists():
            functions = graded_functions(slug)
            from qkv.selfcheck import aggregate

            return slug, aggregate(slug, functions, [(f"test_{f}", f, "not attempted", "no notebook")
                                                     for f in functions]), False
        try:
            return slug, check_notebook(slug, nb, step_timeout=step_timeout), True
        except (ValueError, FileNotFoundError) as exc:  # an unreadable notebook: say so, count as failing
            from qkv.selfcheck import aggregate

            functions = graded_functions(slug)
            return slug, aggregate(slug, functions, [(f"test_{f}", f, "failing", str(exc)) for f in functions],
                                   [str(exc)]), True

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # each check is its own subprocess
        chapters = list(pool.map(one, [c.slug for c in CHAPTERS]))
    return Progress(folder, chapters)
