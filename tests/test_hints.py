"""Hints: every graded function has 2-3, none gives the solution away, and they progress."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys

import pytest

from notebook_tools import REPO, SOLUTION_BLOCK, reference_answers, solution_cell_ids
from qkv import hints
from qkv.chapters import CHAPTERS

# Fragments that look like code statements rather than prose. "return" alone is also an English
# verb in two hints ("return 0", "return all three"), so it counts only when an expression
# follows: a call or index (`return x.sum(`), or arithmetic (`return w @ v`).
STATEMENT = re.compile(r"\bdef \w+\s*\(|\breturn\s+[\w.]+(?:[(\[]|\s*[-+*/@]\s*[\w(])|\s=\s*torch\.|\blambda\b")


def _norm(text: str) -> str:
    return " ".join(text.split())


def solution_lines(chapter: str) -> list[str]:
    """Lines of the reference solutions' bodies worth protecting: at least 12 characters, not comments."""
    out = []
    for source in reference_answers(chapter).values():
        for block in SOLUTION_BLOCK.findall(source + "\n"):
            for line in block.splitlines():
                line = line.split("  #")[0].strip()
                if len(line) >= 12 and not line.startswith("#"):
                    out.append(_norm(line))
    return out


def leaks(hint: str, lines: list[str]) -> list[str]:
    """What in ``hint`` gives code away: reference lines it contains and statement-like fragments."""
    text = _norm(hint)
    found = [line for line in lines if line in text]
    found += [m.group(0) for m in STATEMENT.finditer(hint)]
    return found


@pytest.mark.parametrize("chapter", [c.slug for c in CHAPTERS])
def test_every_graded_function_has_two_or_three_hints(chapter: str) -> None:
    # Read HINTS by importing the module: independent of how qkv.hints reads them.
    module_hints = importlib.import_module(f"qkv.checks.{chapter}").HINTS
    for function in solution_cell_ids(chapter):
        assert function in module_hints, f"{chapter}: no hints for {function}"
        assert 2 <= len(module_hints[function]) <= 3, f"{chapter}.{function}: {len(module_hints[function])} hints"
        assert all(isinstance(h, str) and len(h) > 30 for h in module_hints[function])
        assert hints.all_hints()[function] == (chapter, list(module_hints[function]))


@pytest.mark.parametrize("chapter", [c.slug for c in CHAPTERS])
def test_no_hint_contains_solution_code(chapter: str) -> None:
    lines = solution_lines(chapter)
    assert lines, f"{chapter}: found no reference lines to compare with"
    for function, texts in importlib.import_module(f"qkv.checks.{chapter}").HINTS.items():
        for i, text in enumerate(texts, 1):
            assert not leaks(text, lines), f"{chapter}.{function} hint {i} gives code away: {leaks(text, lines)}"


def test_the_leak_detector_catches_code() -> None:
    """The detector must flag a hint that quotes the reference, even re-wrapped, or a statement."""
    lines = solution_lines("attention")
    quoted = lines[0]
    assert leaks(f"Try this:   {quoted.replace(' ', '  ')} and you are done.", lines)
    assert leaks("Write return weights @ v at the end.", lines)
    assert leaks("Set w = torch.zeros(3) first.", lines)
    assert leaks("Then return torch.cat(parts).", lines)
    assert leaks("Start with def softmax(x): and go on.", lines)
    assert leaks("Use lambda to sort.", lines)
    assert not leaks("Divide the scores by the square root of d_k before the softmax.", lines)
    assert not leaks("At the end return all three; after the last step return 0 (never negative).", lines)


def test_progression_and_levels() -> None:
    texts = importlib.import_module("qkv.checks.attention").HINTS["softmax"]
    hints.reset()
    shown = [hints.hint_text("softmax") for _ in range(4)]
    for level in (1, 2, 3):
        assert shown[level - 1].startswith(f"Hint {level} of 3 for softmax (attention): ")
        assert texts[level - 1] in shown[level - 1]
    assert "last" in shown[2]
    assert shown[3].startswith("That was the last hint for softmax") and texts[2] in shown[3]
    assert texts[1] in hints.hint_text("softmax", 2) and "Hint 2 of 3" in hints.hint_text("softmax", 2)
    assert "hints 1 to 3" in hints.hint_text("softmax", 4)
    hints.reset()
    assert hints.hint_text("softmax").startswith("Hint 1 of 3")
    # Each function progresses on its own.
    assert hints.hint_text("causal_mask").startswith("Hint 1 of")


def test_unknown_function_lists_close_matches() -> None:
    text = hints.hint_text("softmx")
    assert "not a graded function" in text and "softmax" in text and "masked_softmax" in text


def test_qkv_hint_command_and_function(capsys) -> None:
    texts = importlib.import_module("qkv.checks.norms").HINTS["layer_norm"]
    proc = subprocess.run([sys.executable, "-m", "qkv", "hint", "layer_norm", "--level", "2"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and texts[1] in proc.stdout and "Hint 2 of" in proc.stdout, proc
    unknown = subprocess.run([sys.executable, "-m", "qkv", "hint", "layer_nrom"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 1 and "layer_norm" in unknown.stdout
    import qkv

    hints.reset()
    qkv.hint("layer_norm")
    assert texts[0] in capsys.readouterr().out
