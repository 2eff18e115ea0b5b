"""The capstone's library: the plain-data GPT (qkv.gpt) against the same model built from torch
built-ins (qkv.gpt_torch, which shares no code with it), the training helpers, the checks that
grade the exercise, and the tracing of a learner function that breaks training (qkv.own_model)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qkv import gpt
from qkv.checks import capstone as check
from qkv.checks.core import CheckFailed
from qkv.gpt_torch import TorchGPT, adam_reference_step, count_parameters, rope_complex
from qkv.gpt_training import TINY, Settings, bigram_loss, tokenize_corpus, train, unigram_loss

GEOMETRIES = [(4, 4), (4, 2), (4, 1)]  # (H, H_kv): multi-head, grouped-query, multi-query


def _model(n_heads=4, n_kv_heads=2, n_layers=2, seed=0, vocab=40, d_model=16):
    config = gpt.make_config(vocab, d_model, n_heads, n_kv_heads, n_layers)
    return check.random_params(config, seed=seed), config


# ----------------------------------------------------------------------------- the model against torch


@pytest.mark.parametrize("n_heads, n_kv_heads", GEOMETRIES)
def test_forward_matches_the_torch_nn_model(n_heads, n_kv_heads):
    params, config = _model(n_heads, n_kv_heads)
    tokens = torch.randint(0, 40, (3, 9), generator=torch.Generator().manual_seed(1))
    logits, cache = gpt.forward(params, config, tokens)
    want, want_cache = TorchGPT.from_params(params, config)(tokens)
    torch.testing.assert_close(logits, want, atol=1e-10, rtol=1e-10)
    for (k, v), (wk, wv) in zip(cache, want_cache):
        torch.testing.assert_close(k, wk, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(v, wv, atol=1e-12, rtol=1e-12)
    assert logits.shape == (3, 9, 40) and cache[0][0].shape == (3, n_kv_heads, 9, 16 // n_heads)


@pytest.mark.parametrize("n_heads, n_kv_heads", GEOMETRIES)
def test_cached_forward_equals_one_full_call(n_heads, n_kv_heads):
    params, config = _model(n_heads, n_kv_heads, seed=2)
    tokens = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(3))
    full, _ = gpt.forward(params, config, tokens)
    logits, cache = gpt.forward(params, config, tokens[:, :4])
    pieces = [logits]
    for t in range(4, 10):  # then one token at a time
        logits, cache = gpt.forward(params, config, tokens[:, t:t + 1], cache)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-10, rtol=1e-10)
    assert cache[0][0].shape[2] == 10


def test_later_tokens_never_change_earlier_logits():
    params, config = _model()
    tokens = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(4))
    changed = tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 7) % 40
    a, _ = gpt.forward(params, config, tokens)
    b, _ = gpt.forward(params, config, changed)
    assert torch.equal(a[:, :5], b[:, :5]) and not torch.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("n_heads, n_kv_heads", GEOMETRIES)
def test_two_train_steps_match_torch_optim_adam(n_heads, n_kv_heads):
    params, config = _model(n_heads, n_kv_heads, seed=5)
    tokens = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(6))
    mine, state, loss = gpt.train_step(params, config, tokens, 0.01)
    ref, ref_state, ref_loss = adam_reference_step(params, config, tokens, 0.01)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    mine, state, _ = gpt.train_step(mine, config, tokens, 0.01, state)
    ref, ref_state, _ = adam_reference_step(ref, config, tokens, 0.01, ref_state)
    for name in params:
        torch.testing.assert_close(mine[name], ref[name], atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(state["v"][name], ref_state["v"][name], atol=1e-12, rtol=1e-9)
    assert state["step"] == 2


def test_train_step_leaves_its_inputs_alone():
    params, config = _model()
    before = {k: v.clone() for k, v in params.items()}
    gpt.train_step(params, config, torch.randint(0, 40, (2, 5)), 0.1)
    assert all(torch.equal(before[k], params[k]) for k in params)


@pytest.mark.parametrize("temperature, seed", [(0.0, None), (1.0, 7)])
def test_generation_cached_uncached_and_torch_agree(temperature, seed):
    params, config = _model(4, 1, seed=8)
    prompt = torch.randint(0, 40, (3, 2), generator=torch.Generator().manual_seed(9))
    model = {"params": params, "config": config}
    gen = lambda: None if seed is None else torch.Generator().manual_seed(seed)  # noqa: E731
    cached = gpt.generate(model, prompt, 12, True, temperature, gen())
    full = gpt.generate(model, prompt, 12, False, temperature, gen())
    torch_tokens = TorchGPT.from_params(params, config).generate(prompt, 12, temperature, gen())
    assert torch.equal(cached, full) and torch.equal(cached, torch_tokens)
    assert cached.shape == (3, 14) and torch.equal(cached[:, :2], prompt)


def test_parameter_count_matches_the_formula_and_torch():
    config = Settings().config()  # the book's model
    params = gpt.init_params(config)
    # By hand: embedding 512·64 = 32,768; per layer W_Q, W_O 2·64² = 8,192, W_K, W_V 2·64·32 = 4,096,
    # FFN 2·64·256 = 32,768, two gains 128: 45,184; two layers 90,368; final gain 64. Total 123,200.
    assert gpt.count_params(params) == gpt.param_formula(config)["total"] == 123_200
    assert count_parameters(TorchGPT(config)) == 123_200  # torch counts the tied embedding once


def test_initial_loss_is_near_ln_vocab():
    config = gpt.make_config(300, 32, 4, 2, 2)
    tokens = torch.randint(0, 300, (8, 33), generator=torch.Generator().manual_seed(0))
    logits, _ = gpt.forward(gpt.init_params(config), config, tokens[:, :-1])
    assert gpt.next_token_loss(logits, tokens[:, 1:]).item() == pytest.approx(math.log(300), abs=0.02)


@pytest.mark.parametrize("kwargs, message", [
    ({"d_model": 30, "n_heads": 4}, "divisible by n_heads"),
    ({"n_heads": 4, "n_kv_heads": 3}, "multiple of n_kv_heads"),
    ({"d_model": 12, "n_heads": 4}, "must be even"),
])
def test_bad_configs_are_explained(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gpt.make_config(50, **kwargs)


def test_bad_tokens_are_explained():
    params, config = _model()
    with pytest.raises(ValueError, match="int64"):
        gpt.forward(params, config, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\[0, 40\)"):
        gpt.forward(params, config, torch.tensor([[1, 40]]))


def test_rope_complex_known_values():
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0]]).double()  # one position, d = 4
    out = rope_complex(x, torch.tensor([3]))
    want = torch.tensor([[math.cos(3), math.sin(3), math.cos(0.03), math.sin(0.03)]]).double()
    torch.testing.assert_close(out, want)


# ----------------------------------------------------------------------------- training helpers


def test_unigram_and_bigram_baselines_known_values():
    train = torch.tensor([0, 1] * 50)
    assert unigram_loss(train, train, 2) == pytest.approx(math.log(2))  # equal counts: ln 2
    loss, k = bigram_loss(train, train, 2)  # alternation is certain given the current token
    # 99 pairs: 50 of 0→1 (row 0 counts 50 + 0.01 of 50.02), 49 of 1→0 (49.01 of 49.02); smallest k wins.
    want = -(50 * math.log(50.01 / 50.02) + 49 * math.log(49.01 / 49.02)) / 99
    assert k == 0.01 and loss == pytest.approx(want, rel=1e-9)


def test_tiny_run_learns_below_the_unigram_baseline():
    data = tokenize_corpus(TINY)
    assert len(data.val) * 5 < len(data.train) < len(data.val) * 12  # one block in ten is validation
    run = train(TINY, data)
    assert not run.failure and len(run.losses) == TINY.steps
    assert run.val_losses[0] == pytest.approx(math.log(TINY.vocab_size), abs=0.1)
    assert run.final_val_loss < unigram_loss(data.train, data.val, TINY.vocab_size)


# ----------------------------------------------------------------------------- the checks


def _forward_with(**overrides):
    pieces = gpt.LIBRARY_PIECES.with_(**overrides)
    return lambda params, config, tokens, cache=None: gpt.forward(params, config, tokens, cache, pieces=pieces)


def _train_step(params, config, tokens, lr, state=None):
    return gpt.train_step(params, config, tokens, lr, state)


def _generate(model, prompt_ids, n, kv_cache=True, temperature=0.0, generator=None):
    return gpt.generate(model, prompt_ids, n, kv_cache, temperature, generator)


def test_every_check_passes_the_library_model():
    config = check.make_test_config()
    params = check.random_params(config, seed=0)
    tokens = check.random_tokens(config, 2, 7, seed=1, exclude=(3, 30))
    forward = _forward_with()
    check.check_forward(forward, params, config, tokens)
    check.check_forward_causal(forward, params, config, tokens, 3)
    check.check_forward_tied(forward, params, config, tokens)
    check.check_forward_cache(forward, params, config, tokens, 4)
    after, state = check.check_train_step(_train_step, params, config, tokens, 0.01)
    check.check_train_step(_train_step, after, config, tokens, 0.01, state)
    check.check_tied_embedding_trains(_train_step, params, config, tokens, 0.01)
    check.check_generate(_generate, params, config, tokens[:, :3], 5, temperature=1.0, seed=3)
    check.check_generate_cache(_generate, params, config, tokens[:, :3], 6)


def _rope_from_zero(x, positions, base=10000.0):
    return gpt.LIBRARY_PIECES.apply_rope(x, positions - positions[0], base)


@pytest.mark.parametrize("forward, which, message", [
    (_forward_with(causal_mask=lambda n: torch.ones(n, n, dtype=torch.bool)), "value", check.NO_MASK),
    (_forward_with(causal_mask=lambda n: torch.ones(n, n, dtype=torch.bool)), "causal", "sees later tokens"),
    (_forward_with(apply_rope=lambda x, positions, base=1e4: x), "value", check.NO_ROPE),
    (_forward_with(repeat_kv=lambda x, n: x.repeat(1, n, 1, 1)), "value", check.TILED),
    (_forward_with(rms_norm=lambda x, w=None, eps=1e-6: x * w), "value", "values differ"),
    (_forward_with(apply_rope=_rope_from_zero), "cache", check.RESTARTED),
])
def test_forward_mistakes_are_diagnosed(forward, which, message):
    config = check.make_test_config()
    params = check.random_params(config, seed=0)
    tokens = check.random_tokens(config, 2, 7, seed=1)
    run = {"value": lambda: check.check_forward(forward, params, config, tokens),
           "causal": lambda: check.check_forward_causal(forward, params, config, tokens, 3),
           "cache": lambda: check.check_forward_cache(forward, params, config, tokens, 4)}[which]
    with pytest.raises(CheckFailed, match=message[:40].replace("(", r"\(").replace(")", r"\)")):
        run()


def test_an_untied_output_layer_is_caught():
    config = check.make_test_config()
    params = check.random_params(config, seed=0)
    head = torch.randn(config["vocab_size"], config["d_model"], generator=torch.Generator().manual_seed(9)).double()

    def untied(params, config, tokens, cache=None):  # the model, but with a separate output matrix `head`
        norm, eps = gpt.LIBRARY_PIECES.rms_norm, config["norm_eps"]
        x = params["tok_emb"][tokens]
        for i in range(config["n_layers"]):
            p = f"blocks.{i}."
            x = x + gpt.attention(norm(x, params[p + "attn_norm"], eps), params, p, config, None, gpt.LIBRARY_PIECES)[0]
            x = x + F.gelu(norm(x, params[p + "mlp_norm"], eps) @ params[p + "w1"]) @ params[p + "w2"]
        return norm(x, params["final_norm"], eps) @ head.T, []

    with pytest.raises(CheckFailed, match="not tied"):
        check.check_forward_tied(untied, params, config, check.random_tokens(config, 2, 5, seed=2, exclude=(0, 31)))


def _sgd(params, config, tokens, lr, state=None):
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    loss = gpt.next_token_loss(gpt.forward(leaves, config, tokens[:, :-1])[0], tokens[:, 1:])
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return ({k: (v - lr * g).detach() for (k, v), g in zip(leaves.items(), grads)},
            {"step": 1, "m": {}, "v": {}}, loss.item())


def _no_bias_correction(params, config, tokens, lr, state=None):
    new, st, loss = gpt.train_step(params, config, tokens, lr, state)  # its moments m, v are right
    eps = config["adam_eps"]
    return {k: params[k] - lr * st["m"][k] / (st["v"][k].sqrt() + eps) for k in params}, st, loss  # m, v uncorrected


def _ignores_state(params, config, tokens, lr, state=None):
    return gpt.train_step(params, config, tokens, lr, None)


def _unshifted(params, config, tokens, lr, state=None):
    new, st, _ = gpt.train_step(params, config, tokens, lr, state)
    logits = gpt.forward(params, config, tokens[:, :-1])[0]
    return new, st, gpt.next_token_loss(logits, tokens[:, :-1]).item()


def _in_place(params, config, tokens, lr, state=None):
    new, st, loss = gpt.train_step(params, config, tokens, lr, state)
    for k in params:
        params[k].copy_(new[k])
    return params, st, loss


@pytest.mark.parametrize("step, second, message", [
    (_sgd, False, "plain SGD"),
    (_no_bias_correction, False, "no bias correction"),
    (_ignores_state, True, "ignored the state"),
    (_unshifted, False, "its own token"),
    (_in_place, False, "modified an argument in place: `params`"),
])
def test_train_step_mistakes_are_diagnosed(step, second, message):
    config = check.make_test_config()
    params = check.random_params(config, seed=0)
    tokens = check.random_tokens(config, 3, 9, seed=3)
    with pytest.raises(CheckFailed, match=message):
        if second:
            after, state = check.check_train_step(_train_step, params, config, tokens, 0.01)
            check.check_train_step(step, after, config, tokens, 0.01, state)
        else:
            check.check_train_step(step, params, config, tokens, 0.01)


def test_learning_check_passes_adam_and_fails_a_frozen_model():
    config = check.make_test_config(vocab_size=16, d_model=32, n_heads=4, n_kv_heads=2, n_layers=1, d_ff=64)
    batches = check.arithmetic_batches(100, seed=1)
    losses = check.check_train_step_learns(_train_step, check.gpt2_init(config, seed=1), config, batches,
                                           warmup=10, factor=1.0, threshold=1.0)
    assert losses[0] == pytest.approx(math.log(16), abs=0.1) and sum(losses[-10:]) / 10 < 1.0

    def frozen(params, config, tokens, lr, state=None):
        return params, {"step": 0, "m": {}, "v": {}}, _train_step(params, config, tokens, 0.0)[2]

    with pytest.raises(CheckFailed, match="should fall below 1.0"):
        check.check_train_step_learns(frozen, check.gpt2_init(config, seed=1), config, batches, warmup=10,
                                      factor=1.0, threshold=1.0)


def test_generate_mistakes_are_diagnosed():
    config = check.make_test_config()
    params = check.random_params(config, seed=0)
    prompt = check.random_tokens(config, 2, 3, seed=5)

    def only_new(model, prompt_ids, n, kv_cache=True, temperature=0.0, generator=None):
        return _generate(model, prompt_ids, n, kv_cache, temperature, generator)[:, prompt_ids.shape[1]:]

    def broken_cache(model, prompt_ids, n, kv_cache=True, temperature=0.0, generator=None):
        forward = _forward_with(apply_rope=_rope_from_zero)
        return gpt.generate(model, prompt_ids, n, kv_cache, temperature, generator, forward_fn=forward)

    with pytest.raises(CheckFailed, match="not only the new tokens"):
        check.check_generate(only_new, params, config, prompt, 6)
    with pytest.raises(CheckFailed, match="disagree from new token"):
        check.check_generate_cache(broken_cache, params, config, prompt, 8)


# ----------------------------------------------------------------------------- the widget


def test_generation_playground_draws_now_and_on_every_change(monkeypatch):
    import ipywidgets as widgets
    import matplotlib

    matplotlib.use("Agg")
    from qkv import bpe
    from qkv.widgets.capstone import generation_playground, next_token_table

    config = gpt.make_config(256, 16, 4, 2, 1)  # byte tokens only: no merges
    params = gpt.init_params(config, seed=0)
    vocab = bpe.build_vocab([])
    drawn = []
    monkeypatch.setattr(widgets.Output, "clear_output", lambda self, wait=False: drawn.append(1))
    view = generation_playground(params, config, vocab, [])
    assert drawn == [1]
    temperature = view.children[1].children[0]
    assert temperature.description == "temperature"
    temperature.value = 0.0
    assert len(drawn) == 2
    cache = view.children[0].children[1]
    assert cache.description == "KV cache"
    cache.value = False
    assert len(drawn) == 3
    greedy = next_token_table(params, config, torch.tensor([[82, 101]]), vocab, 0.0)
    assert greedy[0][1] == 1.0 and all(p == 0.0 for _, p in greedy[1:])
    sampled = next_token_table(params, config, torch.tensor([[82, 101]]), vocab, 1.0, k=256)
    assert sum(p for _, p in sampled) == pytest.approx(1.0)


def test_the_widget_counts_the_positions_the_cache_saves():
    from qkv.widgets.capstone import counted_generation

    config = gpt.make_config(256, 16, 4, 2, 1)
    params = gpt.init_params(config, seed=0)
    prompt = torch.tensor([[82, 101, 116]])  # T0 = 3
    n = 7
    cached, with_cache = counted_generation(params, config, prompt, n, True, 0.8, seed=4)
    full, without = counted_generation(params, config, prompt, n, False, 0.8, seed=4)
    assert torch.equal(cached, full)  # the cache changes the work, not the tokens
    assert with_cache == 3 + (n - 1)  # the prompt once, then one position per new token but the last
    assert without == sum(3 + s for s in range(n))  # the whole sequence at every step


# ----------------------------------------------------------------------------- the shared diagnosis machinery


def test_a_broken_forward_is_blamed_first_when_train_step_fails():
    from diagnosis_tools import assert_named, failure_of

    maskless = _forward_with(causal_mask=lambda n: torch.ones(n, n, dtype=torch.bool))

    def step(params, config, tokens, lr, state=None):
        return gpt.train_step(params, config, tokens, lr, state, forward_fn=maskless)

    config = check.make_test_config()
    failure = failure_of(check.check_train_step, step, check.random_params(config, seed=0), config,
                         check.random_tokens(config, 3, 9, seed=3), 0.01,
                         namespace={"forward": maskless, "train_step": step})
    assert_named(failure, "your `forward` fails its own check", "causal mask", "fix forward first")


def test_a_leak_no_variant_names_is_caught_by_the_causality_property():
    """The mask shifted by one (each token also sees the next one) is not among the named variants."""
    from diagnosis_tools import assert_named, failure_of

    peeking = _forward_with(causal_mask=lambda n: torch.ones(n, n, dtype=torch.bool).tril(diagonal=1))
    config = check.make_test_config()
    failure = failure_of(check.check_forward, peeking, check.random_params(config, seed=0), config,
                         check.random_tokens(config, 2, 7, seed=1))
    assert_named(failure, "changed the logits at positions", "sees later tokens")
    assert failure.reread is not None and failure.reread.chapter == "masking"


def test_a_cache_that_skips_positions_is_named_by_the_generate_property():
    """generate that feeds the newest token at the wrong position only when the cache is on."""
    from diagnosis_tools import assert_named, failure_of

    def shifted_forward(params, config, tokens, cache=None):
        if cache is not None:  # pretend the cache is one token longer: RoPE positions off by one
            k, v = cache[0]
            cache = [(torch.cat([k[:, :, :1], k], 2), torch.cat([v[:, :, :1], v], 2)) for k, v in cache]
        return gpt.forward(params, config, tokens, cache)

    def generate(model, prompt_ids, n, kv_cache=True, temperature=0.0, generator=None):
        return gpt.generate(model, prompt_ids, n, kv_cache, temperature, generator, forward_fn=shifted_forward)

    config = check.make_test_config()
    params = check.random_params(config, seed=0)
    failure = failure_of(check.check_generate, generate, params, config, check.random_tokens(config, 2, 3, seed=5), 6)
    assert_named(failure, "kv_cache=True and kv_cache=False")


def test_a_crash_in_the_grader_names_the_arguments_by_shape():
    from diagnosis_tools import as_grader_proxy, failure_of

    def broken(params, config, tokens, cache=None):
        return gpt.forward(params, config, tokens.unsqueeze(0), cache)

    config = check.make_test_config()
    failure = failure_of(check.check_forward, as_grader_proxy(broken, "forward"), check.random_params(config, seed=0),
                         config, check.random_tokens(config, 2, 7, seed=1))
    text = str(failure)
    assert text.startswith("forward(params (18 tensors), config, tensor(2, 7) int64) raised"), text


# ----------------------------------------------------------------------------- the exercise's setup cell


def test_the_setup_cell_pieces_behave_as_the_library_pieces():
    """The graded notebook may not import qkv, so its setup cell writes the pieces out; they must
    give the library's results (which the other chapters test against torch) on random inputs."""
    import nbformat

    from autograder.course import SOLUTIONS
    from qkv.attention import softmax
    from qkv.gqa import repeat_kv
    from qkv.masks import causal_mask
    from qkv.multihead import merge_heads, split_heads
    from qkv.norms import rms_norm
    from qkv.positional import apply_rope
    from qkv.schedules import noam_lr

    nb = nbformat.read(SOLUTIONS / "capstone" / "capstone.ipynb", as_version=4)
    (setup,) = [c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "setup"]
    import ast

    imported = {a.name for n in ast.walk(ast.parse(setup)) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(ast.parse(setup)) if isinstance(n, ast.ImportFrom)}
    assert not any(m.split(".")[0] == "qkv" for m in imported), imported  # the grader's sandbox refuses it
    ns: dict = {}
    threads = torch.get_num_threads()
    try:
        exec(compile(setup, "<setup>", "exec"), ns)
    finally:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(2, 3, 5, 8, generator=gen, dtype=dtype)
        masked = x.masked_fill(torch.rand(2, 3, 5, 8, generator=gen) > 0.6, float("-inf"))
        masked[0, 0, 0] = float("-inf")  # a fully masked row
        for dim in (-1, 1):
            assert torch.equal(ns["softmax"](masked, dim=dim), softmax(masked, dim=dim))
        assert torch.equal(ns["repeat_kv"](x, 3), repeat_kv(x, 3))
        assert torch.equal(ns["merge_heads"](x), merge_heads(x))
        flat = merge_heads(x)
        assert torch.equal(ns["split_heads"](flat, 3), split_heads(flat, 3))
        for positions in (torch.arange(5), torch.arange(7, 12)):
            assert torch.equal(ns["apply_rope"](x, positions, 500.0), apply_rope(x, positions, 500.0))
        w = torch.randn(8, generator=gen, dtype=dtype)
        assert torch.equal(ns["rms_norm"](x, w, 1e-5), rms_norm(x, w, 1e-5))
        assert torch.equal(ns["rms_norm"](x), rms_norm(x))
    for n in (0, 1, 6):
        assert torch.equal(ns["causal_mask"](n), causal_mask(n))
    for step in (1, 5, 10, 400):
        assert ns["noam_lr"](step, 64, 10) == noam_lr(step, 64, 10)
