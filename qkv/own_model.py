"""Train the capstone GPT made of a learner's own functions, and find the piece that breaks it.

This runs where the learner's functions live: the process that loaded their notebooks
(qkv.capstone starts it). Each learner function is wrapped by a :class:`Tracker`, which
attributes what goes wrong to the innermost learner function running at the time: an
exception, a step that hangs (``SIGALRM``), or NaN/inf coming out of a function whose inputs
had none. Failures that are not a crash (the loss does not fall, a token sees the future, the
KV cache changes the tokens) are traced by swapping each learner function for the library's
one at a time and seeing which swap fixes it.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

import torch

from qkv import bpe, gpt
from qkv.gpt_training import (
    Assembly,
    Data,
    Run,
    Settings,
    bigram_loss,
    cache_probe,
    causality_probe,
    sample_text,
    tokenize_corpus,
    train,
    unigram_loss,
    validation_windows,
)

# Every function the model is made of ("slots"), in the order data flows, with its chapter.
SLOTS: tuple[tuple[str, str], ...] = (
    ("train_bpe", "tokenization"), ("encode", "tokenization"), ("decode", "tokenization"),
    ("rms_norm", "norms"), ("split_heads", "multihead"), ("apply_rope", "transformer"), ("repeat_kv", "mqa_gqa"),
    ("causal_mask", "masking"), ("softmax", "attention"), ("merge_heads", "multihead"), ("noam_lr", "transformer"),
    ("forward", "capstone"), ("train_step", "capstone"), ("generate", "capstone"),
)
SLOT_CHAPTER = dict(SLOTS)
# A slot may be filled by one of several learner functions, the first that passes (chapter 9 has a fast trainer).
CANDIDATES: dict[str, tuple[str, ...]] = {"train_bpe": ("train_bpe_fast", "train_bpe")}
TOKENIZER = ("train_bpe", "encode", "decode")
CAPSTONE = ("forward", "train_step", "generate")
SAMPLE_PROMPT = "Return the"


class StepTimeout(Exception):
    """A step of the run took longer than allowed."""


class PieceFailed(Exception):
    """A learner function failed; ``slot`` names it and ``symptom`` says how."""

    def __init__(self, slot: str, symptom: str):
        super().__init__(f"{slot}: {symptom}")
        self.slot, self.symptom = slot, symptom


def describe(exc: BaseException, limit: int = 300) -> str:
    """``Type: message``, first line only and at most ``limit`` characters (torch appends long hints)."""
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def _numbers_ok(value, allow_neg_inf: bool) -> bool:
    """No NaN and no +inf anywhere in ``value`` (and no -inf unless allowed: masked logits are -inf)."""
    if isinstance(value, float):
        return not math.isnan(value) and value != math.inf and (allow_neg_inf or value != -math.inf)
    for t in _tensors(value):
        if t.is_floating_point() and t.numel() \
                and (torch.isnan(t).any() or (t == math.inf).any() or (not allow_neg_inf and (t == -math.inf).any())):
            return False
    if isinstance(value, dict):
        return all(_numbers_ok(v, allow_neg_inf) for v in value.values() if isinstance(v, float))
    if isinstance(value, (list, tuple)):
        return all(_numbers_ok(v, allow_neg_inf) for v in value if isinstance(v, float))
    return True


class Tracker:
    """Wraps learner functions and remembers which one misbehaved first, and where."""

    def __init__(self):
        self.active: list[str] = []  # the learner functions running now, outermost first
        self.bad: tuple[str, str] | None = None  # (slot, symptom) of the first NaN/inf from clean inputs
        self.where = ""  # set by the run: "at training step 12"
        self.hung_in: str | None = None  # the innermost learner function running when a StepTimeout fired

    def wrap(self, slot: str, fn: Callable) -> Callable:
        def learner_piece(*args, **kwargs):
            self.active.append(slot)
            try:
                out = fn(*args, **kwargs)
            except StepTimeout:
                self.hung_in = self.hung_in or slot  # the innermost wrapper sees it first
                raise
            except PieceFailed:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of learner code is a verdict on it
                raise PieceFailed(slot, f"raised {describe(exc)}") from exc
            finally:
                self.active.pop()
            if self.bad is None and not _numbers_ok(out, allow_neg_inf=False) \
                    and _numbers_ok((args, kwargs), allow_neg_inf=True):
                self.bad = (slot, f"returned NaN or inf from inputs without NaN {self.where}".rstrip())
            return out

        learner_piece.__name__ = getattr(fn, "__name__", slot)
        learner_piece.__wrapped__ = fn
        return learner_piece

    def innermost(self) -> str | None:
        """The learner function a StepTimeout interrupted, if one was running."""
        return self.hung_in or (self.active[-1] if self.active else None)


class Alarm:
    """Raise StepTimeout in the main thread after ``seconds`` (a no-op off the main thread or for None)."""

    def __init__(self, seconds: float | None, what: str):
        self.seconds, self.what = seconds, what
        self.on = bool(seconds) and threading.current_thread() is threading.main_thread() \
            and hasattr(signal, "setitimer")

    def _fire(self, *_):
        raise StepTimeout(f"{self.what} took longer than {self.seconds:g} s")

    def reset(self) -> None:
        if self.on:
            signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __enter__(self):
        if self.on:
            self.previous = signal.signal(signal.SIGALRM, self._fire)
            self.reset()
        return self

    def __exit__(self, *exc):
        if self.on:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
        return False


# ----------------------------------------------------------------------------- assembling


def assemble(learner: dict[str, Callable], tracker: Tracker, capstone_ns: dict | None = None) -> Assembly:
    """An :class:`Assembly` that uses ``learner[slot]`` (wrapped by ``tracker``) for every slot it fills
    and the library's function for every other slot.

    The learner's ``forward``, ``train_step`` and ``generate`` find the pieces (and each other)
    as globals of their notebook's namespace ``capstone_ns``: those names are rebound here to the
    chosen functions, so the learner's own assembly runs with the learner's own pieces.
    """
    wrapped = {slot: tracker.wrap(slot, fn) for slot, fn in learner.items()}
    pieces = gpt.Pieces(**{name: wrapped.get(name, getattr(gpt.LIBRARY_PIECES, name)) for name in gpt.Pieces.names()})
    forward = wrapped.get("forward", partial(gpt.forward, pieces=pieces))
    assembly = Assembly(
        forward=forward,
        train_step=wrapped.get("train_step", partial(gpt.train_step, pieces=pieces, forward_fn=forward)),
        generate=wrapped.get("generate", partial(gpt.generate, pieces=pieces, forward_fn=forward)),
        noam_lr=pieces.noam_lr,
        train_bpe=wrapped.get("train_bpe", bpe.train_bpe), encode=wrapped.get("encode", bpe.encode),
        decode=wrapped.get("decode", bpe.decode))
    if capstone_ns is not None:
        capstone_ns.update({name: getattr(pieces, name) for name in gpt.Pieces.names()})
        capstone_ns.update(forward=assembly.forward, train_step=assembly.train_step, generate=assembly.generate)
    return assembly


# ----------------------------------------------------------------------------- one run and its health


@dataclass
class Outcome:
    """One training run with a given set of learner functions."""

    used: list[str]  # the learner's slots in use
    run: Run | None = None
    problem: str = ""  # "" when healthy
    culprit: str | None = None  # the slot the tracker caught, when it caught one
    probes: dict[str, str] = field(default_factory=dict)  # probe -> "" or what failed


def train_with(learner: dict[str, Callable], capstone_ns: dict | None, settings: Settings, data: Data,
               baseline: float, *, step_timeout: float | None, progress: Callable | None = None) -> Outcome:
    """Train with ``learner``'s functions and judge the result.

    Healthy means: every loss finite, the final validation loss below ``baseline`` (the unigram
    loss), no token seeing later tokens, and cached generation equal to full recomputation.
    """
    tracker = Tracker()
    assembly = assemble(learner, tracker, capstone_ns)
    outcome = Outcome(sorted(learner))
    step = [0]

    def tick(s: int, loss: float) -> None:
        step[0] = s
        tracker.where = f"at training step {s + 1}"
        timer.reset()
        if progress:
            progress(s, loss)

    tracker.where = "at training step 1"
    try:
        with Alarm(step_timeout, "one training step") as timer:
            outcome.run = train(settings, data, assembly, progress=tick)
    except PieceFailed as exc:
        outcome.culprit, outcome.problem = exc.slot, f"your {exc.slot} {exc.symptom} at training step {step[0] + 1}"
        return outcome
    except StepTimeout as exc:
        outcome.culprit = tracker.innermost()
        who = f"your {outcome.culprit}" if outcome.culprit else "the model"
        outcome.problem = f"{who} made training step {step[0] + 1} hang: {exc} (an infinite loop, or a very slow one?)"
        return outcome
    except Exception as exc:  # noqa: BLE001 - an error outside any learner function: the swaps will trace it
        outcome.problem = f"training stopped at step {step[0] + 1}: {describe(exc)}"
        return outcome
    run = outcome.run
    if tracker.bad is not None:
        outcome.culprit = tracker.bad[0]
        outcome.problem = f"your {tracker.bad[0]} {tracker.bad[1]}" + (f"; {run.failure}" if run.failure else "")
        return outcome
    if run.failure:
        outcome.problem = run.failure
        return outcome
    if not run.final_val_loss < baseline:
        start = run.val_losses[0]
        outcome.problem = (f"the model did not learn: after {len(run.losses)} steps the validation loss is "
                           f"{run.final_val_loss:.3f}, not below the unigram baseline {baseline:.3f} "
                           f"(it started at {start:.3f})")
        return outcome
    outcome.probes = probe(assembly, run, data, settings, step_timeout)
    failed = [what for what in outcome.probes.values() if what]
    if failed:
        outcome.problem = "; ".join(failed)
        culprits = [p for p in ("causality", "cache") if outcome.probes.get(p, "").startswith("your ")]
        if culprits:
            outcome.culprit = outcome.probes[culprits[0]].split()[1]
    return outcome


def probe(assembly: Assembly, run: Run, data: Data, settings: Settings, timeout: float | None) -> dict[str, str]:
    """The causality and KV-cache probes on the trained weights ("" = passed)."""
    windows = validation_windows(data, settings)
    results = {}
    for name, fn, args in (("causality", causality_probe, (windows[:4],)),
                           ("cache", cache_probe, (windows[:2, :8],))):
        try:
            with Alarm(timeout, f"the {name} probe"):
                results[name] = fn(assembly, run.params, run.config, *args)
        except PieceFailed as exc:
            results[name] = f"your {exc.slot} {exc.symptom} during the {name} probe"
        except Exception as exc:  # noqa: BLE001
            results[name] = f"the {name} probe failed: {describe(exc)}"
    return results


def probe_only(learner: dict[str, Callable], capstone_ns: dict | None, run: Run, data: Data, settings: Settings,
               which: str, timeout: float | None) -> str:
    """Rerun one probe on ``run``'s weights with another set of learner functions ("" = passed)."""
    assembly = assemble(learner, Tracker(), capstone_ns)
    return probe(assembly, run, data, settings, timeout)[which]


# ----------------------------------------------------------------------------- finding the culprit


class Judge:
    """Decides whether swapping some of the learner's functions for the library's fixes a failed run.

    A probe failure (causality, cache) is rechecked on the failed run's own trained weights. Any
    other failure is compared in short runs: a swap fixes it when its validation loss comes at
    least halfway from the failing configuration's to the all-library model's, in runs of the
    same length (both measured once, here).
    """

    def __init__(self, learner: dict[str, Callable], capstone_ns: dict | None, failed: Outcome, settings: Settings,
                 data: Data, baseline: float, step_timeout: float | None, log: Callable[[str], None]):
        self.learner, self.capstone_ns, self.failed = learner, capstone_ns, failed
        self.data, self.baseline, self.step_timeout, self.log = data, baseline, step_timeout, log
        self.short = Settings(**{**asdict(settings), "steps": max(settings.steps // 4, min(settings.steps, 40))})
        self.settings = settings
        self.broken_probes = [name for name, what in failed.probes.items() if what] if failed.run else []
        self._reference: tuple[float, float] | None = None

    def _short_loss(self, learner: dict[str, Callable]) -> float:
        outcome = train_with(learner, self.capstone_ns, self.short, self.data, self.baseline,
                             step_timeout=self.step_timeout)
        run = outcome.run
        if run is None or run.failure or (outcome.culprit and outcome.problem):
            return math.inf
        return run.final_val_loss if math.isfinite(run.final_val_loss) else math.inf

    def reference(self) -> tuple[float, float]:
        """(short-run loss with every learner function, short-run loss with none). A run that crashed,
        hung or went NaN counts as infinitely bad without being run again."""
        if self._reference is None:
            failed = self.failed
            hard = failed.run is None or bool(failed.run.failure) or failed.culprit is not None
            self.log(f"a short run of {self.short.steps} steps with the library's functions"
                     + ("" if hard else ", and one with all of yours"))
            self._reference = (math.inf if hard else self._short_loss(self.learner), self._short_loss({}))
        return self._reference

    def fixes(self, slot: str) -> bool:
        without = {k: v for k, v in self.learner.items() if k != slot}
        if self.broken_probes:
            return all(not probe_only(without, self.capstone_ns, self.failed.run, self.data, self.settings, name,
                                      self.step_timeout) for name in self.broken_probes)
        broken, library = self.reference()
        loss = self._short_loss(without)
        if not math.isfinite(loss):
            return False
        if not math.isfinite(broken):
            return loss <= library + 0.5 * max(self.baseline - library, 0.1)
        return broken - library > 0.05 and loss <= library + 0.5 * (broken - library)


def find_culprits(judge: Judge) -> list[str]:
    """The learner slots whose swap for the library's function alone fixes the failure (empty: none does)."""
    swappable = [slot for slot, _ in SLOTS if slot in judge.learner and slot not in TOKENIZER]
    judge.log(f"looking for the function that broke training: trying the library's instead of each of "
              f"{len(swappable)} of yours")
    fixes = []
    for slot in swappable:
        fixed = judge.fixes(slot)
        judge.log(f"  the library's {slot}: {'fixes it' if fixed else 'does not fix it'}")
        if fixed:
            fixes.append(slot)
    return fixes


# ----------------------------------------------------------------------------- the whole procedure


@dataclass
class Event:
    """A learner function that broke training, how, and what happened after it was swapped out."""

    slot: str | None
    problem: str
    traced_by: str  # "caught in the act" or "swapping pieces"


def run_own_model(learner: dict[str, Callable], capstone_ns: dict | None, settings: Settings, *,
                  step_timeout: float | None = 60.0, tokenizer_timeout: float | None = 300.0,
                  log: Callable[[str], None] = lambda _: None,
                  progress: Callable[[int, float], None] | None = None) -> dict:
    """Tokenize, train, probe; while a learner function breaks training, name it, swap it out and retrain.

    Returns plain data (it is sent to the parent process as JSON): the slots used, the events,
    the losses, baselines, a sample before and after training, and the timings.
    """
    learner = dict(learner)
    events: list[Event] = []
    data, tokenizer_note = _tokenize(learner, settings, tokenizer_timeout, log)
    if tokenizer_note:
        events.append(Event(tokenizer_note[0], tokenizer_note[1], "caught in the act"))
    baseline = unigram_loss(data.train, data.val, settings.vocab_size)
    bigram, _ = bigram_loss(data.train, data.val, settings.vocab_size)
    final: Outcome | None = None
    for _ in range(len(learner) + 1):
        log(f"training with {len(learner)} of your functions: {', '.join(sorted(learner)) or 'none'}")
        outcome = train_with(learner, capstone_ns, settings, data, baseline, step_timeout=step_timeout,
                             progress=progress)
        final = outcome
        if not outcome.problem:
            break
        judge = Judge(learner, capstone_ns, outcome, settings, data, baseline, step_timeout, log)
        culprits, traced = [], "caught in the act"
        if outcome.culprit in learner:
            log(f"checking that the library's {outcome.culprit} in place of yours fixes it")
            if judge.fixes(outcome.culprit):
                culprits = [outcome.culprit]
        if not culprits:
            traced = "swapping pieces"
            culprits = find_culprits(judge)
        if not culprits:
            events.append(Event(None, outcome.problem, "no single function"))
            break
        for slot in culprits:
            events.append(Event(slot, outcome.problem, traced))
            learner.pop(slot)
        log(f"training broke: {outcome.problem}; retrying with the library's {', '.join(culprits)}")
    assert final is not None
    result = {"used": sorted(learner), "events": [asdict(e) for e in events], "problem": final.problem,
              "unigram": baseline, "bigram": bigram, "bytes_per_token": data.bytes_per_token,
              "settings": asdict(settings)}
    run = final.run
    if run is not None:
        assembly = assemble(learner, Tracker(), capstone_ns)
        result.update(losses=run.losses, val_steps=run.val_steps, val_losses=run.val_losses,
                      cpu_seconds=run.cpu_seconds, wall_seconds=run.wall_seconds, probes=final.probes,
                      n_params=gpt.count_params(run.params))
        if not final.problem:
            result["sample_before"] = _safe_sample(assembly, run.initial_params, run.config, data, step_timeout)
            result["sample_after"] = _safe_sample(assembly, run.params, run.config, data, step_timeout)
    return result


def _safe_sample(assembly: Assembly, params, config, data: Data, timeout: float | None) -> str:
    try:
        with Alarm(timeout, "sampling 40 tokens"):
            return sample_text(assembly, params, config, data, SAMPLE_PROMPT, 40)
    except Exception as exc:  # noqa: BLE001 - a sample is a courtesy; its failure is reported, not fatal
        return f"(sampling failed: {describe(exc)})"


def _tokenize(learner: dict[str, Callable], settings: Settings, timeout: float | None,
              log: Callable[[str], None]) -> tuple[Data, tuple[str, str] | None]:
    """The corpus tokenized with the learner's BPE if it has one that works in time, else the library's."""
    mine = {k: learner[k] for k in ("train_bpe", "encode") if k in learner}
    if mine:
        tracker = Tracker()
        fns = {k: tracker.wrap(k, f) for k, f in mine.items()}
        start = time.perf_counter()
        try:
            with Alarm(timeout, "tokenizing the corpus"):
                data = tokenize_corpus(settings, fns.get("train_bpe", bpe.train_bpe), fns.get("encode", bpe.encode))
            log(f"tokenized the corpus with your {' and '.join(mine)} in {time.perf_counter() - start:.1f} s")
            return data, None
        except PieceFailed as exc:
            slot, problem = exc.slot, f"your {exc.slot} {exc.symptom} while tokenizing the corpus"
        except StepTimeout as exc:
            slot = tracker.innermost() or next(iter(mine))
            problem = f"your {slot} was too slow: {exc}"
        except Exception as exc:  # noqa: BLE001
            slot, problem = next(iter(mine)), f"tokenizing with your {' and '.join(mine)} failed: {describe(exc)}"
        for k in TOKENIZER:
            learner.pop(k, None)
        log(f"{problem}; using the library's tokenizer")
        return tokenize_corpus(settings), (slot, problem)
    return tokenize_corpus(settings), None
