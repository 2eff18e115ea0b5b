"""Checks for the capstone exercise: the GPT's ``forward``, one ``train_step`` and ``generate``.

The oracle is the same model built from torch built-ins (qkv.gpt_torch: ``nn.RMSNorm``,
``F.scaled_dot_product_attention`` with ``enable_gqa``, rotary embeddings by complex
multiplication, ``torch.optim.Adam``), run in float64 on copies of the inputs, never
qkv.gpt's own code. Properties that need no oracle are checked on the learner's function
alone: causality (later tokens cannot change earlier logits), the tied output layer, and
cached decoding agreeing with full recomputation.
"""

from __future__ import annotations

import math
import numbers

import torch

from qkv.checks import sections
from qkv.checks.core import PATTERN, CheckFailed, Diagnosis, NotAttempted, call_learner, expect_close
from qkv.checks.graded import check_of
from qkv.checks.registry import Diag, Property, declare
from qkv.gpt_torch import TorchGPT, adam_reference_step

# ----------------------------------------------------------------------------- inputs


def make_test_config(vocab_size: int = 32, d_model: int = 16, n_heads: int = 4, n_kv_heads: int = 2,
                     n_layers: int = 2, d_ff: int | None = None) -> dict:
    """A config dict for the tests, written out here (not built by qkv.gpt)."""
    return {"vocab_size": vocab_size, "d_model": d_model, "n_heads": n_heads, "n_kv_heads": n_kv_heads,
            "n_layers": n_layers, "d_ff": 2 * d_model if d_ff is None else d_ff, "rope_base": 10000.0,
            "norm_eps": 1e-6, "adam_betas": (0.9, 0.98), "adam_eps": 1e-9}


def random_params(config: dict, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """Random weights that make every mistake visible: matrices N(0, 1/fan_in), embeddings N(0, 1),
    norm gains 1 + N(0, 0.2²) (so a skipped or swapped gain changes the answer)."""
    model = TorchGPT(config, torch.float64)
    gen = torch.Generator().manual_seed(seed)
    params = {}
    for name, t in model.to_params().items():
        if name.endswith("norm"):
            params[name] = 1 + 0.2 * torch.randn(t.shape, generator=gen, dtype=torch.float64)
        elif name == "tok_emb":
            params[name] = torch.randn(t.shape, generator=gen, dtype=torch.float64)
        else:
            params[name] = torch.randn(t.shape, generator=gen, dtype=torch.float64) / math.sqrt(t.shape[0])
    return {k: v.to(dtype) for k, v in params.items()}


def random_tokens(config: dict, batch: int, t: int, *, seed: int = 0, exclude: tuple[int, ...] = ()) -> torch.Tensor:
    """(batch, t) int64 ids in [0, vocab_size), never any id in ``exclude``."""
    allowed = torch.tensor([i for i in range(config["vocab_size"]) if i not in exclude])
    gen = torch.Generator().manual_seed(seed)
    return allowed[torch.randint(0, len(allowed), (batch, t), generator=gen)]


def _brief(value) -> str:
    """A short description of an argument for a message: shapes, not values (a params dict is big)."""
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, dict):
        if "params" in value and "config" in value:
            return "model"
        if "tok_emb" in value:
            return f"params ({len(value)} tensors)"
        if "d_model" in value:
            return "config"
        return f"dict of {len(value)}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    return repr(value)[:40]


def _call(fn, *args, name: str, **kwargs):
    """:func:`call_learner`, with arguments described by shape: its own message would print every weight."""
    try:
        return call_learner(fn, *args, name=name, **kwargs)
    except NotAttempted:
        raise
    except CheckFailed as exc:
        cause = exc.__cause__
        if cause is None:
            raise
        if not getattr(exc, "crashed", False):
            raise
        described = ", ".join([*map(_brief, args), *(f"{k}={_brief(v)}" for k, v in kwargs.items())])
        detail = f"{name}({described}) {exc.detail}"  # exc.detail: "raised KeyError: … — likely cause: …"
        failure = CheckFailed(detail, reason=exc.reason, level=exc.level, what=name, detail=detail)
        failure.crashed, failure.hung = True, getattr(exc, "hung", False)
        raise failure from cause


def _copy(value):
    """A deep copy of plain data (the learner gets copies; oracles use untouched inputs)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copy(v) for v in value)
    return value


def _oracle(params, config, **switches) -> TorchGPT:
    return TorchGPT.from_params({k: v.double() for k, v in params.items()}, config, torch.float64, **switches)


# ----------------------------------------------------------------------------- forward

NO_ROPE = Diag("your logits equal the model without rotary positions: rotate q and k with apply_rope "
               "(after split_heads, positions 0, 1, …, T − 1), not v.", sections.ROPE)
NO_MASK = Diag("your logits equal the model without the causal mask: every token sees the later ones (the "
               "logits above the diagonal). Fill the logits with −inf where causal_mask is False, before the "
               "softmax.", sections.CAUSAL)
NO_SCALE = Diag("your logits equal the model without the 1/√d_k scale (d_k = d_head) on the attention logits.",
                sections.WHY_SQRT_DK)
TILED = Diag("KV heads are paired with the wrong query heads (tiled 0, 1, 0, 1, …): use repeat_kv, which gives "
             "each KV head a block of consecutive query heads (0, 0, 1, 1, …).", sections.GQA)
NO_FINAL_NORM = "you skipped the final RMSNorm (params['final_norm']) before the tied output layer."
POST_LN = Diag("your blocks are Post-LN (normalize after adding the residual). This model is Pre-LN: "
               "x = x + attention(rms_norm(x)), then x = x + ffn(rms_norm(x)).", sections.PRE_POST_LN)
FORWARD_VARIANTS = (({"rope": False}, NO_ROPE), ({"causal": False}, NO_MASK), ({"scale": False}, NO_SCALE),
                    ({"grouped_kv": False}, TILED), ({"final_norm": False}, NO_FINAL_NORM),
                    ({"pre_ln": False}, POST_LN))


def forward_diagnoses(params, config, tokens) -> list[Diagnosis]:
    out = []
    for switches, message in FORWARD_VARIANTS:
        if switches == {"grouped_kv": False} and config["n_kv_heads"] in (1, config["n_heads"]):
            continue  # tiling and grouping coincide for MHA and MQA
        with torch.no_grad():
            out.append((_oracle(params, config, **switches)(tokens)[0], message))
    return out


def _unpack_forward(result, what: str):
    if not isinstance(result, tuple) or len(result) != 2:
        got = type(result).__name__ + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else "")
        msg = f"forward must return a tuple (logits, cache), got a {got}."
        raise CheckFailed(f"{what}: {msg}", reason=msg)
    return result


def _check_cache(cache, config: dict, batch: int, length: int, what: str) -> None:
    n_layers, n_kv = config["n_layers"], config["n_kv_heads"]
    d_head = config["d_model"] // config["n_heads"]
    want = (batch, n_kv, length, d_head)
    if not isinstance(cache, (list, tuple)) or len(cache) != n_layers:
        got = type(cache).__name__ + (f" of length {len(cache)}" if isinstance(cache, (list, tuple)) else "")
        msg = f"the cache must be a list with one (k, v) pair per layer ({n_layers}), got a {got}."
        raise CheckFailed(f"{what}: {msg}", reason=msg)
    for i, pair in enumerate(cache):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            msg = f"cache[{i}] must be a pair (k, v)."
            raise CheckFailed(f"{what}: {msg}", reason=msg)
        for name, t in zip("kv", pair):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != want:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                msg = (f"cache[{i}] {name} must have shape (B, H_kv, S, d_head) = {want}, got {shape}: keep the "
                       "keys and values with their KV heads (after split_heads, before repeat_kv).")
                raise CheckFailed(f"{what}: {msg}", reason=msg)


@check_of("forward")
def check_forward(forward, params: dict, config: dict, tokens: torch.Tensor) -> None:
    """Logits and cache of one call from an empty cache, against the torch.nn model in float64."""
    oracle = _oracle(params, config)
    with torch.no_grad():
        want_logits, want_cache = oracle(tokens)
    what = f"forward(params, config, tokens of shape {tuple(tokens.shape)})"
    result = _call(forward, _copy(params), dict(config), tokens.clone(), name="forward")
    logits, cache = _unpack_forward(result, what)
    b, t = tokens.shape
    if isinstance(logits, torch.Tensor) and tuple(logits.shape) == (b, t, config["d_model"]):
        msg = "logits have d_model features: project the final hidden states onto the vocabulary with tok_embᵀ."
        raise CheckFailed(f"{what}: {msg}", reason=msg)
    dtype = params["tok_emb"].dtype
    expect_close(logits, want_logits.to(dtype), what=f"{what}: logits",
                 diagnoses=lambda: [(w.to(dtype), m) for w, m in forward_diagnoses(params, config, tokens)])
    _check_cache(cache, config, b, t, f"{what}: cache")
    for i, ((k, v), (wk, wv)) in enumerate(zip(cache, want_cache)):
        expect_close(v, wv.to(dtype), what=f"{what}: cache[{i}] values")
        expect_close(k, wk.to(dtype), what=f"{what}: cache[{i}] keys",
                     diagnoses=lambda i=i: _cached_key_diagnoses(params, config, tokens, i))


def _cached_key_diagnoses(params, config, tokens, layer: int) -> list[Diagnosis]:
    """Keys cached before RoPE: comparable in layer 0 only (later layers' inputs differ too)."""
    if layer:
        return []
    with torch.no_grad():
        keys = _oracle(params, config, rope=False)(tokens)[1][0][0]
    return [(keys, "the cached keys are not rotated: cache k after apply_rope, so that cached and new keys "
                   "are compared at their own positions.")]


@check_of("forward")
def check_forward_causal(forward, params: dict, config: dict, tokens: torch.Tensor, t: int, *, seed: int = 0) -> None:
    """Changing the tokens after position t must leave the logits at positions 0..t unchanged."""
    gen = torch.Generator().manual_seed(seed)
    changed = tokens.clone()
    shift = torch.randint(1, config["vocab_size"], changed[:, t + 1:].shape, generator=gen)
    changed[:, t + 1:] = (changed[:, t + 1:] + shift) % config["vocab_size"]  # every later token differs
    a = _unpack_forward(_call(forward, _copy(params), dict(config), tokens.clone(), name="forward"),
                        "forward")[0]
    b = _unpack_forward(_call(forward, _copy(params), dict(config), changed, name="forward"), "forward")[0]
    for x in (a, b):
        if not isinstance(x, torch.Tensor) or tuple(x.shape[:2]) != tuple(tokens.shape):
            msg = "logits must have shape (B, T, V)."
            raise CheckFailed(f"forward: {msg}", reason=msg)
    diff = (a[:, :t + 1].double() - b[:, :t + 1].double()).abs().nan_to_num(math.inf).max().item()
    if diff > 1e-9:
        msg = (f"changing the tokens after position {t} changed the logits at positions 0..{t} (by up to {diff:.2g}): "
               "a token sees later tokens. Mask the attention logits with causal_mask before the softmax.")
        raise CheckFailed(f"forward: {msg}", reason="changing later tokens changed earlier logits: a token sees "
                                                    "the future. Mask with causal_mask before the softmax.",
                          reread=sections.CAUSAL)


@check_of("forward")
def check_forward_tied(forward, params: dict, config: dict, tokens: torch.Tensor) -> None:
    """The output layer is tok_embᵀ: for ids j, j2 absent from ``tokens``, setting tok_emb[j] = c·tok_emb[j2]
    makes logit j equal c·logit j2 everywhere and changes no other logit."""
    present = set(tokens.flatten().tolist())
    absent = [i for i in range(config["vocab_size"]) if i not in present]
    if len(absent) < 2:
        raise ValueError("check_forward_tied needs two token ids that do not occur in tokens")
    j, j2 = absent[0], absent[-1]
    base = _unpack_forward(_call(forward, _copy(params), dict(config), tokens.clone(), name="forward"),
                           "forward")[0]
    edited = _copy(params)
    edited["tok_emb"][j] = -2.5 * params["tok_emb"][j2]
    got = _unpack_forward(_call(forward, edited, dict(config), tokens.clone(), name="forward"), "forward")[0]
    if not isinstance(got, torch.Tensor) or not isinstance(base, torch.Tensor) or got.shape != base.shape \
            or got.dim() != 3 or got.shape[-1] != config["vocab_size"]:
        msg = "logits must be a tensor of shape (B, T, vocab_size)."
        raise CheckFailed(f"forward: {msg}", reason=msg)
    untied = ("the output layer is not tied to the embedding: logit j must be the final hidden state · "
              "tok_emb[j] (Press & Wolf 2017), so editing row j of tok_emb for a token that is not in the input "
              "must change logit j, and only logit j.")
    others = [i for i in range(config["vocab_size"]) if i != j]
    same = torch.allclose(got[..., others].double(), base[..., others].double(), atol=1e-6, rtol=1e-6)
    follows = torch.allclose(got[..., j].double(), -2.5 * base[..., j2].double(), atol=1e-6, rtol=1e-5)
    if not (same and follows):
        raise CheckFailed(f"forward: {untied}", reason=untied)


NO_CACHE = Diag("the continuation ignored the cache: the new tokens attended only to each other. Concatenate the "
                "cached k and v (per layer) in front of the new ones before attending.", sections.KV_CACHE)
RESTARTED = Diag("the new tokens were rotated as if they started at position 0: with a cache of S tokens, the "
                 "new tokens sit at positions S, S + 1, … (give apply_rope arange(S, S + T)).", sections.ROPE)


@check_of("forward")
def check_forward_cache(forward, params: dict, config: dict, tokens: torch.Tensor, split: int) -> None:
    """forward(tokens[:, :split]) and then forward(tokens[:, split:], cache) give the logits of one full call."""
    oracle = _oracle(params, config)
    with torch.no_grad():
        want, want_cache = oracle(tokens)
    dtype = params["tok_emb"].dtype
    what = f"forward with a cache: {split} tokens, then {tokens.shape[1] - split} more through the cache"
    first = _unpack_forward(_call(forward, _copy(params), dict(config), tokens[:, :split].clone(), name="forward"),
                            what)
    _check_cache(first[1], config, tokens.shape[0], split, f"{what}: the first call's cache")
    second = _unpack_forward(_call(forward, _copy(params), dict(config), tokens[:, split:].clone(), _copy(first[1]),
                                   name="forward"), what)

    def diagnoses():
        with torch.no_grad():
            alone = oracle(tokens[:, split:])[0]
            restarted = oracle(tokens[:, split:], oracle(tokens[:, :split])[1], start=0)[0]
        return [(alone.to(dtype), NO_CACHE), (restarted.to(dtype), RESTARTED)]

    expect_close(second[0], want[:, split:].to(dtype), what=f"{what}: logits of the continuation", diagnoses=diagnoses)
    _check_cache(second[1], config, tokens.shape[0], tokens.shape[1], f"{what}: the cache after both calls")
    for i, ((k, v), (wk, wv)) in enumerate(zip(second[1], want_cache)):
        expect_close(k, wk.to(dtype), what=f"{what}: cache[{i}] keys after both calls")
        expect_close(v, wv.to(dtype), what=f"{what}: cache[{i}] values after both calls")


# ----------------------------------------------------------------------------- train_step


def _unpack_step(result, what: str):
    if not isinstance(result, tuple) or len(result) != 3:
        got = type(result).__name__ + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else "")
        msg = f"train_step must return a tuple (new_params, new_state, loss), got a {got}."
        raise CheckFailed(f"{what}: {msg}", reason=msg)
    new_params, state, loss = result
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        loss = loss.item()
    if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
        msg = f"the loss must be a float (use loss.item()), got {type(loss).__name__}."
        raise CheckFailed(f"{what}: {msg}", reason=msg)
    if not isinstance(new_params, dict) or not isinstance(state, dict):
        msg = "new_params and new_state must be dicts."
        raise CheckFailed(f"{what}: {msg}", reason=msg)
    return new_params, state, float(loss)


def _grads(params, config, tokens) -> dict[str, torch.Tensor]:
    """Gradients of the next-token loss at ``params`` (float64), by autograd on the torch.nn model."""
    model = _oracle(params, config)
    model.loss(tokens).backward()
    return model.grads()


def _update_close(got, old: torch.Tensor, want: torch.Tensor, grad: torch.Tensor, lr: float) -> bool:
    """Does the learner's new parameter match the oracle's, up to what rounding can explain?

    Adam moves a parameter by about lr · g / (|g| + ε). Where a gradient is as small as its own
    rounding error (exactly 0 in exact arithmetic, e.g. W_Q when every query has one key), the
    direction is noise: float64 leaves an error of order 1e-7 · lr there, float32 anything up to
    2 · lr. So float64 is compared everywhere with atol 1e-6 · lr; lower precision only where
    |g| ≥ 1e-4 (elsewhere it must merely stay within 2 · lr of the old value).
    """
    if not isinstance(got, torch.Tensor) or got.shape != want.shape or got.dtype != old.dtype:
        return False
    g, w, o = got.double(), want.double(), old.double()
    if not torch.isfinite(g).all():
        return False
    if old.dtype == torch.float64:
        return torch.allclose(g, w, rtol=1e-7, atol=max(1e-6 * lr, 1e-12))
    robust = grad.abs() >= 1e-4
    close = torch.isclose(g, w, rtol=1e-4, atol=1e-3 * lr + 1e-6)
    bounded = (g - o).abs() <= 2 * lr + 1e-6
    return bool(torch.where(robust, close, bounded).all())


def train_step_diagnoses(params, config, tokens, lr, state) -> list[tuple[dict, str]]:
    """Wrong updates (as whole params dicts, float64) and what each one means."""
    grads = _grads(params, config, tokens)
    b1, b2 = config["adam_betas"]
    eps = config["adam_eps"]
    out = [({k: params[k].double() - lr * g for k, g in grads.items()},
            "your update is plain SGD (params − lr · grad); this exercise asks for Adam: keep the moment "
            "estimates m and v in the state and divide by √v̂ + ε.")]
    no_bc = {}
    for k, g in grads.items():
        m = b1 * (0 if state is None else state["m"][k].double()) + (1 - b1) * g
        v = b2 * (0 if state is None else state["v"][k].double()) + (1 - b2) * g * g
        no_bc[k] = params[k].double() - lr * m / (v.sqrt() + eps)
    out.append((no_bc, "your Adam has no bias correction: divide m by 1 − β1^t and v by 1 − β2^t "
                       "(t = the step number, counting from 1), or the first steps are far too large or small."))
    if state is not None and state["step"] > 0:
        fresh = adam_reference_step(params, config, tokens, lr, None, torch.float64)[0]
        out.append((fresh, "your step ignored the state passed in: it restarted Adam from zero moments. Use "
                           "state['m'], state['v'] and state['step'] when state is not None."))
    return out


@check_of("train_step")
def check_train_step(train_step, params: dict, config: dict, tokens: torch.Tensor, lr: float,
                     state: dict | None = None) -> tuple[dict, dict]:
    """One step against torch.optim.Adam on the torch.nn model (float64).

    Returns the oracle's (new params, new state), to chain a second step from the right place."""
    want_params, want_state, want_loss = adam_reference_step(params, config, tokens, lr, state, torch.float64)
    what = (f"train_step(tokens of shape {tuple(tokens.shape)}, lr={lr:g}, "
            f"state at step {0 if state is None else state['step']})")
    given_params, given_state = _copy(params), _copy(state)
    result = _call(train_step, given_params, dict(config), tokens.clone(), lr, given_state, name="train_step")
    new_params, new_state, loss = _unpack_step(result, what)
    if sorted(new_params) != sorted(params):
        msg = (f"new_params must have exactly the keys of params; missing {sorted(set(params) - set(new_params))}, "
               f"extra {sorted(set(new_params) - set(params))}.")
        raise CheckFailed(f"{what}: {msg}", reason="new_params must have exactly the keys of params.")
    if not math.isclose(loss, want_loss, rel_tol=1e-6, abs_tol=1e-9):
        shifted = _oracle(params, config)
        with torch.no_grad():
            logits = shifted(tokens[:, :-1])[0]
            same = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                     tokens[:, :-1].reshape(-1)).item()
        if math.isclose(loss, same, rel_tol=1e-6):
            msg = ("your loss compares each position with its own token; the target of position t is the next "
                   "token: read tokens[:, :-1], predict tokens[:, 1:].")
            raise CheckFailed(f"{what}: {msg}", reason=msg)
        if math.isclose(loss, adam_reference_step(want_params, config, tokens, lr, None, torch.float64)[2],
                        rel_tol=1e-6):
            msg = "your loss was computed after the update; return the loss of the params you were given."
            raise CheckFailed(f"{what}: {msg}", reason=msg)
        msg = f"the loss should be {want_loss:.6f} (mean cross-entropy of the next token), got {loss:.6f}."
        raise CheckFailed(f"{what}: {msg}", reason="the loss differs from the mean next-token cross-entropy.")
    grads = _grads(params, config, tokens)
    wrong = None
    for name in params:
        got = new_params[name]
        if not isinstance(got, torch.Tensor) or got.shape != params[name].shape or got.dtype != params[name].dtype:
            expect_close(got, want_params[name].to(params[name].dtype), what=f"{what}: new_params[{name!r}]")
        if not _update_close(got, params[name], want_params[name], grads[name], lr):
            wrong = name
            break
    if wrong is not None:
        for variant, message in train_step_diagnoses(params, config, tokens, lr, state):
            if all(_update_close(new_params[k], params[k], variant[k], grads[k], lr) for k in params):
                raise CheckFailed(f"{what}: {message}", reason=message)
        worst = (new_params[wrong].double() - want_params[wrong]).abs().nan_to_num(math.inf).max().item()
        msg = (f"new_params[{wrong!r}] differs from Adam's update (largest difference {worst:.3g}, "
               f"with lr = {lr:g}).")
        raise CheckFailed(f"{what}: {msg}", reason=f"new_params[{wrong!r}] differs from Adam's update.")
    if new_state.get("step") != want_state["step"]:
        msg = f"new_state['step'] should be {want_state['step']} (steps count from 1), got {new_state.get('step')!r}."
        raise CheckFailed(f"{what}: {msg}", reason="new_state['step'] is wrong (steps count from 1).")
    for key, meaning in (("m", "first moment (mean of gradients)"), ("v", "second moment (mean of squared gradients)")):
        moments = new_state.get(key)
        if not isinstance(moments, dict) or sorted(moments) != sorted(params):
            msg = f"new_state[{key!r}] must be a dict with one tensor per parameter: Adam's {meaning}."
            raise CheckFailed(f"{what}: {msg}", reason=msg)
        for name in params:
            expect_close(moments[name], want_state[key][name].to(params[name].dtype),
                         what=f"{what}: new_state[{key!r}][{name!r}], Adam's {meaning}")
    dtype = params["tok_emb"].dtype
    cast = {k: t.to(dtype) for k, t in want_params.items()}
    return cast, {"step": want_state["step"], "m": {k: t.to(dtype) for k, t in want_state["m"].items()},
                  "v": {k: t.to(dtype) for k, t in want_state["v"].items()}}


@check_of("train_step")
def check_tied_embedding_trains(train_step, params: dict, config: dict, tokens: torch.Tensor, lr: float) -> None:
    """A token absent from the batch still gets its embedding row updated: through the tied output layer."""
    present = set(tokens.flatten().tolist())
    absent = [i for i in range(config["vocab_size"]) if i not in present]
    if not absent:
        raise ValueError("check_tied_embedding_trains needs a token id that does not occur in tokens")
    result = _call(train_step, _copy(params), dict(config), tokens.clone(), lr, None, name="train_step")
    new_params = _unpack_step(result, "train_step")[0]
    row = new_params.get("tok_emb")
    if not isinstance(row, torch.Tensor) or row.shape != params["tok_emb"].shape:
        msg = "new_params['tok_emb'] must be a tensor of the shape of params['tok_emb']."
        raise CheckFailed(f"train_step: {msg}", reason=msg)
    if torch.equal(row[absent], params["tok_emb"][absent]):
        msg = ("the embedding rows of tokens absent from the batch did not change. With a tied output layer they "
               "receive a gradient through the logits (every token's logit is in the softmax): the gradient of "
               "tok_emb must flow through both of its uses.")
        raise CheckFailed(f"train_step: {msg}", reason=msg)


def gpt2_init(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Starting weights for the learning test, written out here: N(0, 0.02²), the matrices that write into
    the residual stream (wo, w2) scaled by 1/√(2·n_layers), norm gains 1 (GPT-2's initialization)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in TorchGPT(config, torch.float32).to_params().items():
        if name.endswith("norm"):
            out[name] = torch.ones_like(t)
        else:
            std = 0.02 / math.sqrt(2 * config["n_layers"]) if name.endswith(("wo", "w2")) else 0.02
            out[name] = torch.randn(t.shape, generator=gen) * std
    return out


def arithmetic_batches(n_steps: int, *, vocab_size: int = 16, batch: int = 16, t: int = 12,
                       seed: int = 0) -> list[torch.Tensor]:
    """A tiny fixed task: each row counts from a random start by a random stride 1, 2 or 3 (mod V).

    Knowing only the current token leaves 3 equally likely next tokens (loss ≥ ln 3 ≈ 1.10);
    reading the previous token too gives the stride, and then the rest is certain.
    Returns ``n_steps`` int64 batches of shape (batch, t + 1).
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_steps):
        start = torch.randint(0, vocab_size, (batch, 1), generator=gen)
        stride = torch.randint(1, 4, (batch, 1), generator=gen)
        out.append((start + stride * torch.arange(t + 1)) % vocab_size)
    return out


def noam_schedule(step: int, d_model: int, warmup: int) -> float:
    """Vaswani et al. 2017, §5.3, written out for the checks: d^-0.5 · min(step^-0.5, step · warmup^-1.5)."""
    return d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)


@check_of("train_step")
def check_train_step_learns(train_step, params: dict, config: dict, batches: list[torch.Tensor], *,
                            warmup: int, factor: float, threshold: float, last: int = 10) -> list[float]:
    """Train with the learner's step on ``batches`` (Noam schedule × factor); the mean of the last ``last``
    losses must fall below ``threshold``. Returns the losses."""
    state, losses = None, []
    current = _copy(params)
    for step, tokens in enumerate(batches, start=1):
        lr = factor * noam_schedule(step, config["d_model"], warmup)
        result = _call(train_step, current, dict(config), tokens, lr, state, name="train_step")
        current, state, loss = _unpack_step(result, f"train_step at step {step}")
        if not math.isfinite(loss):
            msg = f"the loss became {loss} at step {step}."
            raise CheckFailed(f"train_step: {msg}", reason="the loss became NaN or infinite during training.")
        losses.append(loss)
    final = sum(losses[-last:]) / min(last, len(losses))
    if not final < threshold:
        msg = (f"after {len(batches)} steps the loss is {final:.3f} (mean of the last {last}); it should fall "
               f"below {threshold}. It started at {losses[0]:.3f}. Check that each step passes the state on and "
               "moves against the gradient.")
        raise CheckFailed(f"train_step: {msg}", reason=f"the loss did not fall below {threshold} within "
                                                        f"{len(batches)} steps.")
    return losses


# ----------------------------------------------------------------------------- generate


def oracle_generate(params, config, prompt_ids, n, temperature=0.0, seed=None) -> torch.Tensor:
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return _oracle(params, config).generate(prompt_ids, n, temperature, generator)


def _check_tokens_result(got, want: torch.Tensor, prompt: torch.Tensor, what: str) -> None:
    if not isinstance(got, torch.Tensor):
        msg = f"generate must return a tensor of token ids, got {type(got).__name__}."
        raise CheckFailed(f"{what}: {msg}", reason=msg)
    n = want.shape[1] - prompt.shape[1]
    if tuple(got.shape) == (prompt.shape[0], n) and n != want.shape[1]:
        msg = "return the prompt followed by the new tokens, shape (B, T0 + n), not only the new tokens."
        raise CheckFailed(f"{what}: {msg}", reason=msg)
    if tuple(got.shape) != tuple(want.shape):
        msg = f"expected shape {tuple(want.shape)} (B, T0 + n), got {tuple(got.shape)}."
        raise CheckFailed(f"{what}: {msg}", reason="the result has the wrong shape; expected (B, T0 + n).")
    if got.dtype != torch.int64:
        msg = f"token ids must be int64, got {got.dtype}."
        raise CheckFailed(f"{what}: {msg}", reason=msg)
    if not torch.equal(got[:, :prompt.shape[1]], prompt):
        msg = "the first T0 tokens must be the prompt, unchanged."
        raise CheckFailed(f"{what}: {msg}", reason=msg)
    if not torch.equal(got, want):
        diff = (got != want).any(dim=0).nonzero()
        first = int(diff[0]) - prompt.shape[1]
        msg = (f"the generated tokens differ from the expected ones from new token {first} on. Greedy decoding "
               "takes the argmax of the last position's logits; sampling draws from softmax(logits / temperature) "
               "with torch.multinomial(probs, 1, generator=generator).")
        raise CheckFailed(f"{what}: {msg}", reason="the generated tokens differ from the expected ones.",
                          level=PATTERN)  # no known mistake named: the properties may name one


@check_of("generate")
def check_generate(generate, params: dict, config: dict, prompt_ids: torch.Tensor, n: int, *, kv_cache: bool = True,
                   temperature: float = 0.0, seed: int | None = None) -> None:
    """Tokens from ``generate`` equal the torch.nn model's, recomputed in full at every step (float64)."""
    want = oracle_generate(params, config, prompt_ids, n, temperature, seed)
    model = {"params": _copy(params), "config": dict(config)}
    kwargs = {"kv_cache": kv_cache, "temperature": temperature}
    if seed is not None:
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    got = _call(generate, model, prompt_ids.clone(), n, name="generate", **kwargs)
    mode = "greedy" if temperature == 0 else f"sampling at temperature {temperature}"
    _check_tokens_result(got, want, prompt_ids, f"generate(prompt of shape {tuple(prompt_ids.shape)}, n={n}, "
                                                f"kv_cache={kv_cache}, {mode})")


@check_of("generate")
def check_generate_cache(generate, params: dict, config: dict, prompt_ids: torch.Tensor, n: int) -> None:
    """Cached and uncached generation give the same tokens, token for token (greedy)."""
    model = {"params": _copy(params), "config": dict(config)}
    cached = _call(generate, model, prompt_ids.clone(), n, kv_cache=True, name="generate")
    full = _call(generate, _copy(model), prompt_ids.clone(), n, kv_cache=False, name="generate")
    for got in (cached, full):
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != (prompt_ids.shape[0], prompt_ids.shape[1] + n):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            msg = f"generate must return (B, T0 + n) token ids, got {shape}."
            raise CheckFailed(f"generate: {msg}", reason=msg)
    if not torch.equal(cached, full):
        step = int((cached != full).any(dim=0).nonzero()[0]) - prompt_ids.shape[1]
        msg = (f"kv_cache=True and kv_cache=False disagree from new token {step} on. After the prompt, feed only "
               "the newest token with the cache; its position is the cache length.")
        raise CheckFailed(f"generate: {msg}", reason="cached and uncached generation disagree.")
    want = oracle_generate(params, config, prompt_ids, n)
    _check_tokens_result(cached, want, prompt_ids, f"generate(kv_cache=True, n={n})")


# ----------------------------------------------------------------------------- learner guidance

# Graded function (or "*" for all) -> calls an answer must not use (autograder.banned reads this).
# The attention, the blocks and the optimizer are the exercise; the pieces come from the setup cell.
BANNED = {
    "*": ["torch.nn.functional.scaled_dot_product_attention", "torch.nn.MultiheadAttention",
          "torch.nn.functional.multi_head_attention_forward", "torch.nn.Transformer",
          "torch.nn.TransformerEncoder", "torch.nn.TransformerEncoderLayer", "torch.nn.TransformerDecoder",
          "torch.nn.TransformerDecoderLayer", "torch.nn.RMSNorm", "torch.nn.functional.rms_norm", "torch.optim"],
}

REREAD = {
    "forward": "How do the pieces fit together?",
    "train_step": "How is it trained, and does it learn?",
    "generate": "Does the KV cache change the generated tokens, and what does it save?",
}

HINTS = {
    "forward": [
        "Follow the diagram at the top of the notebook: embedding rows, then for each layer two residual "
        "updates x = x + sublayer(rms_norm(x)), then the final norm and the tied output layer tok_embᵀ.",
        "Inside attention: project with the layer's wq, wk, wv; split_heads with n_heads for q and n_kv_heads for "
        "k and v; rotate q and k with apply_rope at the absolute positions; append the cached k, v along the "
        "sequence axis; then repeat_kv before the scores.",
        "With S cached tokens and T new ones, the scores are (B, H, T, S + T) and the mask is the last T rows "
        "of causal_mask(S + T). The new cache of each layer is the (k, v) pair before repeat_kv.",
    ],
    "train_step": [
        "Make leaf copies of the params that require grad, run your forward on tokens[:, :-1] and take the "
        "cross-entropy against tokens[:, 1:].",
        "torch.autograd.grad(loss, list_of_leaves) gives one gradient per parameter; the tied embedding gets "
        "the sum of both of its uses automatically.",
        "Adam per parameter: m = β1·m + (1 − β1)·g, v = β2·v + (1 − β2)·g², then divide m and v by "
        "1 − β^t (bias correction) and step by lr · m̂ / (√v̂ + ε). The state is (step, m, v).",
    ],
    "generate": [
        "Greedy decoding repeats: logits of the last position → the next token → append it.",
        "Without a cache, call forward on the whole sequence every step. With one, call it once on the prompt, "
        "then on only the newest token (shape (B, 1)) with the cache it returned.",
        "For sampling, probs = softmax(logits / temperature) and torch.multinomial(probs, 1, generator=generator); "
        "temperature 0 means argmax.",
    ],
}


# ----------------------------------------------------------------------------- declarations
# Properties run only when a check failed without a named diagnosis; each makes two or three small calls.


def _causal_broken(probe) -> str | None:
    """Logits at positions 0..t must not change when the tokens after t change."""
    params, config, tokens = probe.get("params"), probe.get("config"), probe.get("tokens")
    if not isinstance(params, dict) or not isinstance(config, dict) or not isinstance(tokens, torch.Tensor) \
            or tokens.dim() != 2 or tokens.shape[1] < 2:
        return None
    t = tokens.shape[1] // 2 - 1 if tokens.shape[1] > 2 else 0
    changed = tokens.clone()
    changed[:, t + 1:] = (changed[:, t + 1:] + 1) % config["vocab_size"]
    a = probe.call(_copy(params), dict(config), tokens.clone())
    b = probe.call(_copy(params), dict(config), changed)
    if not (isinstance(a, tuple) and isinstance(b, tuple) and isinstance(a[0], torch.Tensor)
            and isinstance(b[0], torch.Tensor) and a[0].shape == b[0].shape and a[0].dim() == 3):
        return None
    if torch.allclose(a[0][:, :t + 1].double(), b[0][:, :t + 1].double(), atol=1e-9, rtol=0):
        return None
    return Diag(f"changing the tokens after position {t} changed the logits at positions 0..{t}: a token sees later "
                "tokens. Mask the attention logits above the diagonal with causal_mask before the softmax.",
                sections.CAUSAL)


def _cache_agrees_broken(probe) -> str | None:
    """Greedy generation with and without the cache gives the same tokens."""
    model, prompt, n = probe.get("model"), probe.get("prompt_ids"), probe.get("n")
    if model is None and isinstance(probe.get("params"), dict):
        model = {"params": probe.get("params"), "config": probe.get("config")}
    if not isinstance(model, dict) or not isinstance(prompt, torch.Tensor) or not isinstance(n, int) or n < 2:
        return None
    cached = probe.call(_copy(model), prompt.clone(), n, kv_cache=True)
    full = probe.call(_copy(model), prompt.clone(), n, kv_cache=False)
    if not (isinstance(cached, torch.Tensor) and isinstance(full, torch.Tensor) and cached.shape == full.shape):
        return None
    if torch.equal(cached, full):
        return None
    return Diag("greedy generation with kv_cache=True and kv_cache=False gives different tokens: after the prompt, "
                "feed only the newest token with the cache, at position = the cache length.", sections.KV_CACHE)


def _forward_self_check(forward) -> None:
    """forward on a one-layer GQA model: logits and cache against the torch.nn model."""
    config = make_test_config(vocab_size=16, d_model=8, n_heads=2, n_kv_heads=1, n_layers=1)
    check_forward(forward, random_params(config, seed=900), config, random_tokens(config, 1, 4, seed=901))


declare("forward", chapter="capstone", args=("params", "config", "tokens", "cache"), self_check=_forward_self_check,
        properties=(Property("changing later tokens leaves the logits of earlier positions unchanged", _causal_broken,
                             sections.CAUSAL),))
declare("train_step", chapter="capstone", args=("params", "config", "tokens", "lr", "state"), helpers=("forward",))
declare("generate", chapter="capstone", args=("model", "prompt_ids", "n", "kv_cache", "temperature", "generator"),
        helpers=("forward",),
        properties=(Property("greedy generation gives the same tokens with and without the KV cache",
                             _cache_agrees_broken, sections.KV_CACHE),))
