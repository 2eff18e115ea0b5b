"""nbgrader preprocessors that put qkv's trusted verdicts into nbgrader's own pipeline.

Stock autograde executes the learner's notebook and scores test cells by their
outputs, in a kernel the learner's code controls. We replace that execution step
with ApplyTrustedVerdicts, which writes the verdicts computed by autograder.verify
as the test cells' outputs; nbgrader's SaveAutoGrades then records the scores in
its gradebook exactly as it would have.
"""

from __future__ import annotations

from pathlib import Path

from nbformat.v4 import new_output
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Unicode

from autograder.verdicts import Verdicts


class ApplyTrustedVerdicts(NbGraderPreprocessor):
    verdicts_dir = Unicode("", help="folder holding <student_id>.json verdict files").tag(config=True)

    def preprocess(self, nb, resources):
        student = resources["nbgrader"]["student"]
        verdicts = Verdicts.from_json((Path(self.verdicts_dir) / f"{student}.json").read_text())
        for cell in nb.cells:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            gid = meta.get("grade_id")
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
            elif meta.get("grade"):
                missing = "the grader has no verdict for this cell"
                cell.outputs.append(new_output("error", ename="NotGraded", evalue=missing,
                                               traceback=[f"NotGraded: {missing}"]))
            elif gid in verdicts.cell_errors:
                note = f"Note from the grader: {verdicts.cell_errors[gid]}\n"
                cell.outputs.append(new_output("stream", name="stdout", text=note))
        return nb, resources
