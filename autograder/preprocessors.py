"""nbgrader preprocessors that put qkv's trusted verdicts into nbgrader's own pipeline.

Stock autograde executes the learner's notebook and scores test cells by their
outputs, in a kernel the learner's code controls. We replace that execution step
with ApplyTrustedVerdicts, which writes the verdicts computed by autograder.verify
as the test cells' outputs; nbgrader's SaveAutoGrades then records the scores in
its gradebook exactly as it would have.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_output
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Unicode

from autograder.feedback import reread_output
from autograder.verdicts import Verdicts, learner_cell_id
from qkv.notebook_contract import nbgrader as nbgrader_meta
from qkv.notebook_contract import normalize_grade_ids


class NormalizeGradeIds(NbGraderPreprocessor):
    """Before nbgrader's own checks: one cell per grade_id, with the role the release gives it.

    A learner who split or copied an answer cell in Jupyter hands in two cells with one id.
    nbgrader's DeduplicateIds would then empty the metadata of one of them, which its own
    validation rejects as "an old version" (nbgrader 0.9.6), and the notebook could not be
    recorded; an id the release does not have fails validation too. The rule is the one the
    verification used (``qkv.notebook_contract.normalize_grade_ids``): the cell that defines the
    function is the answer, every other copy is a plain cell of the learner's."""

    source_notebook = Unicode("", help="the assignment's source notebook (the roles of its grade_ids)").tag(config=True)

    def preprocess(self, nb, resources):
        source = nbformat.read(self.source_notebook, as_version=4)
        roles = {meta["grade_id"]: {**meta, "cell_type": cell.cell_type}
                 for cell in source.cells if (meta := nbgrader_meta(cell)).get("grade_id")}
        normalize_grade_ids(nb.cells, roles)
        return nb, resources


class ApplyTrustedVerdicts(NbGraderPreprocessor):
    verdicts_dir = Unicode("", help="folder holding <student_id>.json verdict files").tag(config=True)
    book_edition = Unicode("en", help="the edition of the book a failed test's reread link points into").tag(
        config=True)

    def preprocess(self, nb, resources):
        student = resources["nbgrader"]["student"]
        verdicts = Verdicts.from_json((Path(self.verdicts_dir) / f"{student}.json").read_text())
        for index, cell in enumerate(nb.cells):
            meta = cell.get("metadata", {}).get("nbgrader", {})
            gid = meta.get("grade_id")
            # an answer's note is under its grade_id; a cell the learner added, under its place
            # (the recorded notebook keeps the submission's cells in their order)
            note_key = gid if gid in verdicts.cell_errors else learner_cell_id(index)
            if cell.cell_type != "code":
                continue
            cell.outputs = []
            if meta.get("grade") and gid in verdicts.tests:
                v = verdicts.tests[gid]
                if v.output:
                    cell.outputs.append(new_output("stream", name="stdout", text=v.output))
                if not v.passed:
                    name = "BannedCall" if v.banned else "TestFailed"
                    cell.outputs.append(new_output("error", ename=name, evalue=v.message,
                                                   traceback=[f"{name}: {v.message}"]))
                    if v.reread_heading and not v.banned:
                        reread = reread_output(v.reread_chapter, v.reread_heading, self.book_edition)
                        cell.outputs.append(reread)
            elif meta.get("grade"):
                missing = "the grader has no verdict for this cell"
                cell.outputs.append(new_output("error", ename="NotGraded", evalue=missing,
                                               traceback=[f"NotGraded: {missing}"]))
            elif note_key in verdicts.cell_errors:
                note = f"Note from the grader: {verdicts.cell_errors[note_key]}\n"
                cell.outputs.append(new_output("stream", name="stdout", text=note))
        return nb, resources
