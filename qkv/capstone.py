"""``qkv capstone FOLDER``: train the capstone GPT made of your own functions from your chapter notebooks.

:func:`from_notebooks` (the command line calls it) does four things:

1. finds your notebooks ``FOLDER/<chapter>/<chapter>.ipynb`` (as ``qkv progress`` does);
2. checks each chapter the way ``qkv check`` does, in a subprocess, never reading ``solutions/``;
   a function of yours is used when it passes its chapter's visible checks, otherwise the
   library's is used in its place and the report says why;
3. loads your functions in one more subprocess and trains the model there (qkv.own_model):
   your ``forward``, ``train_step`` and ``generate`` from the capstone notebook, with your
   softmax, causal mask, heads, GQA, RoPE, schedule, RMSNorm and BPE swapped in;
4. prints a table: which piece is yours, the loss reached against the baselines, a sample, and,
   if one of your functions broke training, which one and how.
"""

from __future__ import annotations

import html
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qkv.chapters import chapter as chapter_info
from qkv.gpt_training import Settings

REPO = Path(__file__).resolve().parent.parent
DEFAULT_STEP_TIMEOUT = 60.0  # seconds one training step, cell or check may take
START_UP_SECONDS = 120.0  # the worker imports torch and runs your notebooks' cells first


# ----------------------------------------------------------------------------- the self-check, adapted

class _SelfCheck:
    """The one place this module uses qkv.selfcheck: finding notebooks, their verdicts, their cells."""

    @staticmethod
    def notebook(folder: Path, chapter: str) -> Path | None:
        """Your notebook for ``chapter`` under ``folder`` (the layouts ``qkv progress`` accepts), or None."""
        name = f"{chapter}.ipynb"
        for candidate in (folder / chapter / name, folder / "exercises" / chapter / name, folder / name):
            if candidate.is_file():
                return candidate
        return None

    @staticmethod
    def verdicts(chapter: str, notebook: Path, step_timeout: float) -> dict[str, tuple[str, str]]:
        """function -> (status, diagnosis) from the chapter's visible checks, run in a subprocess."""
        from qkv.selfcheck import check_notebook

        report = check_notebook(chapter, notebook, step_timeout=step_timeout)
        return {r.function: (r.status, r.diagnosis) for r in report.results}

    @staticmethod
    def cells(notebook: Path) -> list[tuple[str, str]]:
        """(id, source) of the code cells to load: not the tests, not the self-check cell."""
        import nbformat

        from qkv.selfcheck import learner_code_cells

        return learner_code_cells(nbformat.read(notebook, as_version=4))

    @staticmethod
    def cell_runner(namespace: dict) -> Callable[[str, str], object]:
        """``run(source, name)``: runs your cells in ``namespace`` as Jupyter would (magics included),
        with the runner ``qkv check`` uses."""
        from qkv.notebook_contract import CellRunner

        return CellRunner(namespace).run


# ----------------------------------------------------------------------------- the report


@dataclass
class PieceRow:
    slot: str  # the model's piece ("softmax", "forward", ...)
    chapter: str  # its chapter slug
    function: str  # the function of yours that fills it ("train_bpe_fast") or ""
    yours: bool  # used in the final model
    note: str = ""  # why not yours, or what happened to it


@dataclass
class CapstoneReport:
    """What ``qkv capstone FOLDER`` found and trained."""

    folder: str
    rows: list[PieceRow]
    result: dict = field(default_factory=dict)  # qkv.own_model.run_own_model's result
    notes: list[str] = field(default_factory=list)

    @property
    def broke(self) -> list[dict]:
        """The events in which a function of yours broke training."""
        return self.result.get("events", [])

    @property
    def ok(self) -> bool:
        """The final model trained and passed the probes, and none of your functions had to be swapped out."""
        return bool(self.result) and not self.result.get("problem") and not self.broke

    def to_text(self) -> str:
        from qkv.chapters import chapter as info

        lines = [f"qkv capstone {self.folder}", ""]
        table = [("piece", "chapter", "used", "note")]
        for r in self.rows:
            ch = info(r.chapter)
            table.append((r.slot, f"{ch.number} {r.chapter}", "yours" if r.yours else "library", r.note))
        widths = [max(len(row[i]) for row in table) for i in range(3)]
        for i, row in enumerate(table):
            lines.append(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}".rstrip())
            if i == 0:
                lines.append("-" * (sum(widths) + 6 + 30))
        n_yours = sum(r.yours for r in self.rows)
        lines += ["", f"{n_yours} of {len(self.rows)} pieces of the model are yours."]
        lines += self._result_lines()
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _result_lines(self) -> list[str]:
        res = self.result
        if not res:
            return ["No training ran."]
        out = []
        for e in self.broke:
            who = f"your {e['slot']} (chapter {_number(e['slot'])})" if e["slot"] else "your functions"
            how = "caught while it happened" if e["traced_by"] == "caught in the act" else \
                "found by swapping each of your functions for the library's" if e["slot"] else e["traced_by"]
            out.append(f"BROKE TRAINING: {who}: {e['problem']} ({how}).")
            if e["slot"]:
                out.append(f"  the library's {e['slot']} was used instead for the run below.")
        if "losses" in res:
            steps = len(res["losses"])
            out += ["", f"Training: {steps} steps in {res['wall_seconds']:.0f} s ({res['cpu_seconds']:.0f} s of CPU), "
                        f"{res['n_params']:,} parameters.",
                    f"Validation loss: {res['val_losses'][0]:.3f} at the start, {res['val_losses'][-1]:.3f} at the end "
                    f"(nats per token; unigram baseline {res['unigram']:.3f}, bigram baseline {res['bigram']:.3f})."]
        if res.get("problem"):
            out.append(f"The final model is not healthy: {res['problem']}.")
        else:
            out.append("Causal (later tokens never change earlier logits): yes. "
                       "Cached generation equals full recomputation: yes.")
        if res.get("sample_after"):
            out += ["", f"Sample before training: {res['sample_before']!r}",
                    f"Sample after training:  {res['sample_after']!r}"]
        return out

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td><code>{html.escape(r.slot)}</code></td><td>{html.escape(r.chapter)}</td>"
            f"<td><b>{'yours' if r.yours else 'library'}</b></td>"
            f"<td style='text-align:left'>{html.escape(r.note)}</td></tr>"
            for r in self.rows)
        rest = "".join(f"<p>{html.escape(line)}</p>" for line in self._result_lines() if line)
        return (f"<div class='qkv-capstone'><p><b>qkv capstone {html.escape(self.folder)}</b></p><table><thead><tr>"
                f"<th>piece</th><th>chapter</th><th>used</th><th>note</th></tr></thead><tbody>{rows}</tbody></table>"
                f"{rest}</div>")


def _number(slot: str) -> int:
    from qkv.own_model import SLOT_CHAPTER

    return chapter_info(SLOT_CHAPTER[slot]).number


# ----------------------------------------------------------------------------- choosing the pieces


def choose_pieces(folder: Path, *, use_failing: bool = False, step_timeout: float = DEFAULT_STEP_TIMEOUT,
                  workers: int = 2) -> tuple[list[PieceRow], dict[str, Path]]:
    """For every slot of the model: your function if it passes its chapter's visible checks (or, with
    ``use_failing``, if it is at least attempted), else the library's. Returns the rows and the notebooks."""
    from qkv.own_model import CANDIDATES, SLOTS

    chapters = list(dict.fromkeys(ch for _, ch in SLOTS))
    notebooks = {ch: nb for ch in chapters if (nb := _SelfCheck.notebook(folder, ch)) is not None}

    def verdicts(ch: str) -> tuple[str, dict | str]:
        try:
            return ch, _SelfCheck.verdicts(ch, notebooks[ch], step_timeout)
        except Exception as exc:  # noqa: BLE001 - an unreadable notebook: the library fills its slots
            return ch, f"could not check {notebooks[ch]}: {exc}"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        checked = dict(pool.map(verdicts, list(notebooks)))
    rows = []
    for slot, ch in SLOTS:
        if ch not in notebooks:
            rows.append(PieceRow(slot, ch, "", False, f"no notebook {ch}/{ch}.ipynb in {folder}"))
            continue
        if isinstance(checked[ch], str):
            rows.append(PieceRow(slot, ch, "", False, checked[ch]))
            continue
        status = checked[ch]
        row = None
        for fn in CANDIDATES.get(slot, (slot,)):
            state, diagnosis = status.get(fn, ("not attempted", "not in the notebook"))
            if state == "passed":
                row = PieceRow(slot, ch, fn, True, f"(your {fn})" if fn != slot else "")
                break
            if state == "failing" and use_failing:
                row = PieceRow(slot, ch, fn, True, f"fails its checks, used anyway (--use-failing): {diagnosis}")
                break
        if row is None:
            fn = CANDIDATES.get(slot, (slot,))[-1]
            state, diagnosis = status.get(fn, ("not attempted", ""))
            why = "not attempted yet" if state == "not attempted" else f"failing its checks: {diagnosis}"
            row = PieceRow(slot, ch, "", False, f"yours is {why}")
        rows.append(row)
    return rows, notebooks


# ----------------------------------------------------------------------------- the worker process


def _worker() -> None:
    """Child process: load the learner's notebooks, train, report. Spec as JSON on stdin; one JSON
    message per line on the original stdout; the learner's prints go to /dev/null."""
    spec = json.loads(sys.stdin.read())
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process

    def send(**msg) -> None:
        proto.write(json.dumps(msg) + "\n")
        proto.flush()

    import torch

    from qkv import own_model

    torch.set_num_threads(1)  # a small model: more threads only add overhead
    learner, capstone_ns, load_notes = {}, None, []
    wanted = spec["use"]  # slot -> function name
    for chapter, path in spec["notebooks"].items():
        if not any(own_model.SLOT_CHAPTER[s] == chapter for s in wanted):
            continue
        ns: dict = {"__name__": "__main__"}
        run_cell = _SelfCheck.cell_runner(ns)
        folder = str(Path(path).parent)
        os.chdir(folder)
        sys.path.insert(0, folder)
        for cid, source in _SelfCheck.cells(Path(path)):
            send(kind="start", what=f"loading {chapter}: {cid}")
            try:
                with own_model.Alarm(spec["step_timeout"], f"cell {cid} of {chapter}"):
                    run_cell(source, f"<{chapter}: {cid}>")
            except BaseException as exc:  # noqa: BLE001 - a learner cell may raise anything
                load_notes.append(f"{chapter}: cell {cid} raised {type(exc).__name__}: {exc}")
        sys.path.remove(folder)
        for slot, fn in wanted.items():
            if own_model.SLOT_CHAPTER[slot] == chapter:
                if callable(ns.get(fn)):
                    learner[slot] = ns[fn]
                else:
                    load_notes.append(f"{slot}: {fn} is not defined after running {chapter}'s cells")
        if chapter == "capstone":
            capstone_ns = ns
    settings = Settings(**spec["settings"])
    send(kind="start", what="training")
    result = own_model.run_own_model(
        learner, capstone_ns, settings, step_timeout=spec["step_timeout"],
        tokenizer_timeout=spec["tokenizer_timeout"], log=lambda text: send(kind="log", text=text),
        progress=lambda step, loss: send(kind="step", step=step, loss=loss))
    result["load_notes"] = load_notes
    send(kind="result", result=result)


def _run_worker(spec: dict, step_timeout: float, on_message: Callable[[dict], None]) -> tuple[dict | None, str]:
    """Run the worker; return (its result or None, what went wrong)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("MPLBACKEND", "Agg")
    proc = subprocess.Popen([sys.executable, "-m", "qkv.capstone", "--worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdin and proc.stdout
    proc.stdin.write(json.dumps(spec).encode())
    proc.stdin.close()
    buf, current = b"", "start-up"
    # Beyond the worker's own alarms (StepTimeout), a hard deadline per message: a hang in C code
    # or an ignored signal still ends here.
    deadline = time.monotonic() + START_UP_SECONDS + step_timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, f"{current} did not finish within {step_timeout + 30:g} s; the run was stopped"
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                proc.wait()
                return None, f"the training process ended during {current} (exit code {proc.returncode}): " \
                             "did a cell call exit(), or crash Python?"
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                deadline = time.monotonic() + step_timeout * (3 if msg["kind"] == "log" else 1) + 30
                if msg["kind"] == "start":
                    current = msg["what"]
                elif msg["kind"] == "result":
                    return msg["result"], ""
                on_message(msg)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------- the public entry point


def from_notebooks(folder: str | os.PathLike, *, settings: Settings | None = None, use_failing: bool = False,
                   step_timeout: float = DEFAULT_STEP_TIMEOUT, tokenizer_timeout: float = 300.0,
                   show_progress: bool = False, echo: Callable[[str], None] | None = None) -> CapstoneReport:
    """Train the capstone GPT from the functions in your completed chapter notebooks under ``folder``.

    Args:
        folder: your working copy of the exercises (``folder/<chapter>/<chapter>.ipynb``).
        settings: sizes of the run (default: the book's, under a minute of CPU for the
            training itself; qkv.gpt_training.TINY is a seconds-long run).
        use_failing: also use functions that fail their checks, to see what they do to a real model.
        step_timeout: seconds one check, cell or training step may take.
        show_progress: a progress bar on stderr while training.
        echo: called with each progress line (``print`` in the terminal).

    Returns:
        A :class:`CapstoneReport` (its ``to_text()`` is what ``qkv capstone`` prints).

    Raises:
        FileNotFoundError: if ``folder`` is not a folder.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder}; pass your working copy of the exercises, "
                                "e.g. qkv capstone ~/my-qkv")
    settings = settings or Settings()
    echo = echo or (lambda _: None)
    echo(f"checking your chapter notebooks in {folder} ...")
    rows, notebooks = choose_pieces(folder, use_failing=use_failing, step_timeout=step_timeout)
    use = {r.slot: r.function for r in rows if r.yours}
    spec = {"notebooks": {ch: str(p.resolve()) for ch, p in notebooks.items()}, "use": use,
            "settings": asdict(settings), "step_timeout": step_timeout, "tokenizer_timeout": tokenizer_timeout}
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=settings.steps, desc="training", unit="step", file=sys.stderr)

    def on_message(msg: dict) -> None:
        if msg["kind"] == "log":
            (bar.write if bar else echo)(msg["text"])
        elif msg["kind"] == "step" and bar is not None:
            if msg["step"] == 1:
                bar.reset()
            bar.update(1)
            bar.set_postfix(loss=f"{msg['loss']:.3f}")

    echo(f"training a GPT with {len(use)} of your functions ...")
    try:
        result, failure = _run_worker(spec, step_timeout, on_message)
    finally:
        if bar is not None:
            bar.close()
    report = CapstoneReport(str(folder), rows, result or {})
    if failure:
        report.notes.append(failure)
    if result:
        used = set(result["used"])
        for row in report.rows:
            if row.yours and row.slot not in used:
                row.yours = False
                event = next((e for e in result["events"] if e["slot"] == row.slot), None)
                row.note = f"broke training: {event['problem']}" if event else "could not be loaded"
        report.notes += result.get("load_notes", [])
    return report


def main(folder: Path, *, steps: int | None, use_failing: bool, step_timeout: float, tiny: bool) -> int:
    """``qkv capstone FOLDER``: print the report; exit 0 when your model trained with none of your
    functions breaking it, 1 when one broke it (or nothing could be trained), 2 on bad input."""
    from dataclasses import replace

    from qkv.gpt_training import TINY

    settings = TINY if tiny else Settings()
    if steps is not None:
        if steps < 1:
            print(f"qkv capstone: --steps must be at least 1, got {steps}", file=sys.stderr)
            return 2
        settings = replace(settings, steps=steps)
    try:
        report = from_notebooks(folder, settings=settings, use_failing=use_failing, step_timeout=step_timeout,
                                show_progress=sys.stderr.isatty(), echo=print)
    except FileNotFoundError as exc:
        print(f"qkv capstone: {exc}", file=sys.stderr)
        return 2
    print()
    print(report.to_text())
    return 0 if report.ok else 1


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker()
