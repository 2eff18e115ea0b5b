"""``qkv capstone FOLDER``: the GPT trained from a learner's own functions, and the tracing of the one
that breaks training.

In-process tests give qkv.own_model deliberately broken functions (the library's pieces stand in
for the learner's correct ones); the slow tests run the command on folders of completed exercises
built from the references, one of them with a deliberately wrong causal mask.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from notebook_tools import learner_notebook, solution_cell_ids
from qkv import gpt, own_model
from qkv.gpt_training import TINY

LIBRARY = {name: getattr(gpt.LIBRARY_PIECES, name) for name in gpt.Pieces.names()}  # correct "learner" pieces


def _leaky_mask(n: int) -> torch.Tensor:
    """The mistake of forgetting the mask: every query may see every key."""
    return torch.ones(n, n, dtype=torch.bool)


def _noam_without_inverse_root(step: int, d_model: int, warmup: int) -> float:
    """d_model^+0.5 instead of d_model^-0.5: a learning rate 64 times too large for d_model = 32."""
    return d_model ** 0.5 * min(step ** -0.5, step * warmup ** -1.5)


def _softmax_nan_on_long_rows(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    out = torch.softmax(x, dim)
    return out * float("nan") if x.shape[dim] > 20 else out


def _run(**broken) -> dict:
    return own_model.run_own_model({**LIBRARY, **broken}, None, TINY, step_timeout=15.0)


def test_correct_functions_train_with_no_event():
    result = _run()
    assert result["events"] == [] and result["problem"] == ""
    assert sorted(result["used"]) == sorted(LIBRARY)
    assert result["val_losses"][-1] < result["unigram"]
    assert result["probes"] == {"causality": "", "cache": ""}
    assert result["sample_after"].startswith(own_model.SAMPLE_PROMPT)


def test_nan_is_caught_in_the_function_that_made_it():
    result = _run(softmax=_softmax_nan_on_long_rows)
    [event] = result["events"]
    assert event["slot"] == "softmax" and event["traced_by"] == "caught in the act"
    assert "returned NaN or inf from inputs without NaN at training step 1" in event["problem"]
    assert "softmax" not in result["used"] and result["problem"] == ""  # retrained with the library's


def test_a_hang_is_caught_in_the_function_that_hangs():
    calls = [0]

    def softmax_that_hangs(x, dim=-1):
        calls[0] += 1
        while calls[0] > 6:  # an infinite loop from the 7th call on
            pass
        return torch.softmax(x, dim)

    result = _run(softmax=softmax_that_hangs)
    [event] = result["events"]
    assert event["slot"] == "softmax" and "hang" in event["problem"] and result["problem"] == ""


def test_an_exception_during_the_cache_probe_names_the_function():
    def rope_only_from_zero(x, positions, base=10000.0):
        if positions[0] != 0:
            raise ValueError("positions must start at 0")
        return gpt.LIBRARY_PIECES.apply_rope(x, positions, base)

    [event] = _run(apply_rope=rope_only_from_zero)["events"]
    assert event["slot"] == "apply_rope" and "ValueError: positions must start at 0" in event["problem"]


@pytest.mark.slow
def test_a_leaky_mask_is_found_by_swapping_pieces():
    result = _run(causal_mask=_leaky_mask)
    [event] = result["events"]
    assert event["slot"] == "causal_mask" and event["traced_by"] == "swapping pieces"
    assert "a token sees later tokens" in event["problem"]
    assert result["problem"] == "" and "causal_mask" not in result["used"]


@pytest.mark.slow
def test_a_learning_rate_too_large_is_found_by_swapping_pieces():
    result = _run(noam_lr=_noam_without_inverse_root)
    [event] = result["events"]
    assert event["slot"] == "noam_lr" and "did not learn" in event["problem"]
    assert result["problem"] == ""


# ----------------------------------------------------------------------------- the command, on notebooks


CAPSTONE_CHAPTERS = ["attention", "masking", "multihead", "mqa_gqa", "transformer", "norms", "tokenization", "capstone"]
LEAKY_CAUSAL_MASK = '''def causal_mask(n: int) -> torch.Tensor:
    """A deliberate mistake: no masking at all."""
    return torch.ones(n, n, dtype=torch.bool)
'''


def _folder(root: Path, chapters: list[str], answers: dict[str, dict[str, str]] | None = None) -> Path:
    for ch in chapters:
        filled = {g: "reference" for g in solution_cell_ids(ch)}
        filled.update((answers or {}).get(ch, {}))
        (root / ch).mkdir(parents=True)
        nbformat.write(learner_notebook(ch, filled), root / ch / f"{ch}.ipynb")
    return root


def _qkv_capstone(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qkv", "capstone", str(folder), "--tiny", *args],
                          capture_output=True, text=True, timeout=1500)


@pytest.mark.slow
def test_a_complete_folder_trains_a_model_made_entirely_of_the_learners_code(tmp_path):
    proc = _qkv_capstone(_folder(tmp_path, CAPSTONE_CHAPTERS))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "14 of 14 pieces of the model are yours." in out
    assert "(your train_bpe_fast)" in out and "BROKE" not in out
    assert "Cached generation equals full recomputation: yes." in out
    assert "Sample after training:  'Return the" in out


@pytest.mark.slow
def test_a_wrong_piece_is_replaced_and_named_and_with_use_failing_its_damage_is_traced(tmp_path):
    from qkv.capstone import from_notebooks

    folder = _folder(tmp_path, ["masking", "capstone"], {"masking": {"causal_mask": LEAKY_CAUSAL_MASK}})
    # Default: the wrong causal_mask fails its checks, so the library's takes its place and the table says why.
    proc = _qkv_capstone(folder)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [row] = [line for line in proc.stdout.splitlines() if line.startswith("causal_mask")]
    assert "library" in row and "failing its checks" in row
    assert "no notebook attention/attention.ipynb" in proc.stdout  # chapters not there: the library's, and why
    # --use-failing: the learner's mask is used; training "works" by reading the answer, and the run says so.
    report = from_notebooks(folder, settings=TINY, use_failing=True)
    [event] = report.broke
    assert event["slot"] == "causal_mask" and "a token sees later tokens" in event["problem"]
    assert not report.ok and report.result["problem"] == ""  # the rerun with the library's mask is healthy
    text = report.to_text()
    assert "BROKE TRAINING: your causal_mask (chapter 3): a token sees later tokens" in text
    assert {r.slot for r in report.rows if r.yours} == {"forward", "train_step", "generate"}
    [row] = [r for r in report.rows if r.slot == "causal_mask"]
    assert row.note.startswith("broke training: a token sees later tokens")


def test_a_missing_folder_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "qkv", "capstone", str(tmp_path / "nope")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "no folder" in proc.stderr and "qkv capstone ~/my-qkv" in proc.stderr


# ----------------------------------------------------------------------------- the report and the exit status


def _report(events, problem=""):
    from qkv.capstone import CapstoneReport, PieceRow

    rows = [PieceRow("softmax", "attention", "softmax", not events, ""),
            PieceRow("forward", "capstone", "forward", True, "")]
    result = {"used": ["forward"] if events else ["forward", "softmax"], "events": events, "problem": problem,
              "unigram": 4.1, "bigram": 3.0, "losses": [5.0, 4.0], "val_steps": [0, 2], "val_losses": [5.5, 3.9],
              "cpu_seconds": 1.0, "wall_seconds": 2.0, "n_params": 1234, "sample_before": "x", "sample_after": "y"}
    return CapstoneReport("my-qkv", rows, result)


def test_the_report_names_the_function_that_broke_training_and_the_exit_status_follows(monkeypatch, capsys):
    from qkv import capstone

    event = {"slot": "softmax", "problem": "your softmax returned NaN or inf from inputs without NaN at training "
                                           "step 3; the loss became nan at step 3", "traced_by": "caught in the act"}
    broken = _report([event])
    assert not broken.ok
    text = broken.to_text()
    assert "BROKE TRAINING: your softmax (chapter 1): your softmax returned NaN" in text
    assert "caught while it happened" in text and "the library's softmax was used instead" in text
    assert "1 of 2 pieces of the model are yours." in text
    healthy = _report([])
    assert healthy.ok and "BROKE" not in healthy.to_text() and "2 of 2 pieces" in healthy.to_text()
    assert "unigram baseline 4.100, bigram baseline 3.000" in healthy.to_text()
    for report, status in ((healthy, 0), (broken, 1)):
        monkeypatch.setattr(capstone, "from_notebooks", lambda *a, report=report, **k: report)
        assert capstone.main(Path("."), steps=None, use_failing=False, step_timeout=5, tiny=True) == status
    assert capstone.main(Path("."), steps=0, use_failing=False, step_timeout=5, tiny=True) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
