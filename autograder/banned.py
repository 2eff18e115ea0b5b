"""Static detection of calls an exercise forbids (the built-in it asks learners to write).

Each chapter's ``qkv/checks/<slug>.py`` declares ``BANNED``: graded function name
(or ``"*"`` for all) -> dotted names such as ``torch.softmax``. A ``torch.Tensor.X``
entry also bans the method spelling ``x.X(...)``. Importing ``qkv`` is banned in
every answer. Aliases (``import torch.nn.functional as F``, ``from torch import
softmax as s``) and ``getattr(obj, "name")`` with a literal name are resolved.

This is the first layer. Names built at run time (``getattr(torch, "soft" + "max")``, ``eval``,
``vars(F)[...]``, ``torch.ops.aten...``) escape it; the second layer (``runtime_denials``, applied in
the sandbox by sandbox_worker.py) blocks the torch operators and modules a banned name reaches,
whatever the spelling, while the grader calls a learner's function.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass

ALWAYS_BANNED_MODULES = ("qkv",)
# torch's private Python implementations of its operators: softmax, tril, the norms, ... written
# with allowed operators, so the refused kernels never run (a stop-21 red team called
# torch._decomp.decomposition_table[aten._softmax] and torch._refs.softmax for full marks). No
# answer needs them: banned in every exercise. The sandbox cannot refuse the modules (torch.func and
# torch.optim import them); it makes the functions of refused operators refuse instead
# (sandbox_worker._refuse_python_versions; book/instructors.md, "Known limits").
ALWAYS_BANNED_NAMES = ("torch._refs", "torch._decomp", "torch._prims")

# Every operator that computes a softmax itself: the sparse, masked and nested ones too (a learner
# who writes torch.sparse.softmax(x.to_sparse(), dim) or torch._masked_softmax(x, mask) calls a
# softmax). tests/test_banned.py checks that every such operator of the installed torch is listed.
_SOFTMAX = ["softmax", "_softmax", "special_softmax", "_safe_softmax", "_sparse_softmax", "_masked_softmax",
            "_nested_tensor_softmax_with_shape"]
_LOG_SOFTMAX = ["log_softmax", "_log_softmax", "special_log_softmax", "_sparse_log_softmax"]
_SDPA = ["scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
         "_scaled_dot_product_attention_math", "_scaled_dot_product_efficient_attention",
         "_scaled_dot_product_flash_attention", "_scaled_dot_product_cudnn_attention",
         "_scaled_dot_product_attention_math_for_mps", "_scaled_dot_product_fused_attention_overrideable",
         # the kernels behind them (GPU builds; listed so that no spelling of attention is left out)
         "_flash_attention_forward", "_flash_attention_forward_no_dropout_inplace", "_efficient_attention_forward",
         "_cudnn_attention_forward", "_triton_scaled_dot_attention"]
# Only the fused operator: the module's slow path is made of allowed operators (linear, bmm, and
# scaled_dot_product_attention, which the transformer chapter's own blocks may use); it is caught
# as a torch function in the calling thread, and statically.
_MHA = ["_native_multi_head_attention", "_triton_multi_head_attention"]
_LAYER_NORM = ["layer_norm", "native_layer_norm"]
_BATCH_NORM = ["batch_norm", "native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
               "_native_batch_norm_legit_functional", "_batch_norm_impl_index", "_batch_norm_with_update",
               "_batch_norm_with_update_functional", "_batch_norm_no_update", "batch_norm_stats",
               "batch_norm_elemt", "batch_norm_update_stats", "batch_norm_gather_stats",
               "batch_norm_gather_stats_with_counts", "cudnn_batch_norm", "miopen_batch_norm", "quantized_batch_norm"]
_RMS_NORM = ["rms_norm", "_fused_rms_norm"]
_DROPOUT = ["dropout", "dropout_", "native_dropout", "feature_dropout", "feature_dropout_", "alpha_dropout",
            "alpha_dropout_", "feature_alpha_dropout", "feature_alpha_dropout_", "_fused_dropout"]
# The torch operators (aten op packets, every overload) each banned name reaches at run time. A
# banned name that is not here (a module such as tiktoken, numpy.interp) is blocked as a module
# import, or left to the static layer (see book/instructors.md, "Known limits").
RUNTIME_OPS: dict[str, list[str]] = {
    "torch.softmax": _SOFTMAX, "torch.nn.functional.softmax": _SOFTMAX, "torch.Tensor.softmax": _SOFTMAX,
    "torch.special.softmax": _SOFTMAX, "torch.nn.Softmax": _SOFTMAX,
    **{name: _LOG_SOFTMAX for name in ("torch.log_softmax", "torch.nn.functional.log_softmax", "torch.nn.LogSoftmax",
                                       "torch.special.log_softmax", "torch.Tensor.log_softmax")},
    "torch.nn.functional.scaled_dot_product_attention": _SDPA,
    "torch.nn.MultiheadAttention": _MHA, "torch.nn.functional.multi_head_attention_forward": _MHA,
    "torch.tril": ["tril", "tril_"], "torch.Tensor.tril": ["tril", "tril_"],
    "torch.triu": ["triu", "triu_"], "torch.Tensor.triu": ["triu", "triu_"],
    "torch.tril_indices": ["tril_indices"], "torch.triu_indices": ["triu_indices"],
    # a triangular solve reads one triangle of its matrix: solving twice against the identity
    # gives the lower triangle of ones (a stop-21 red team's causal mask)
    "torch.linalg.solve_triangular": ["linalg_solve_triangular"], "torch.triangular_solve": ["triangular_solve"],
    "torch.Tensor.triangular_solve": ["triangular_solve"],
    "torch.repeat_interleave": ["repeat_interleave"], "torch.Tensor.repeat_interleave": ["repeat_interleave"],
    "torch.nn.functional.layer_norm": _LAYER_NORM, "torch.nn.LayerNorm": _LAYER_NORM, "torch.layer_norm": _LAYER_NORM,
    "torch.native_layer_norm": _LAYER_NORM,
    "torch.nn.functional.batch_norm": _BATCH_NORM, "torch.nn.BatchNorm1d": _BATCH_NORM,
    "torch.nn.BatchNorm2d": _BATCH_NORM, "torch.nn.BatchNorm3d": _BATCH_NORM, "torch.batch_norm": _BATCH_NORM,
    "torch.native_batch_norm": _BATCH_NORM,
    "torch.nn.functional.rms_norm": _RMS_NORM, "torch.nn.RMSNorm": _RMS_NORM, "torch.rms_norm": _RMS_NORM,
    "torch.nn.functional.group_norm": ["group_norm", "native_group_norm"],
    "torch.nn.GroupNorm": ["group_norm", "native_group_norm"], "torch.group_norm": ["group_norm", "native_group_norm"],
    "torch.nn.functional.instance_norm": ["instance_norm"], "torch.nn.InstanceNorm1d": ["instance_norm"],
    "torch.instance_norm": ["instance_norm"],
    "torch.nn.Dropout": _DROPOUT, "torch.nn.Dropout1d": _DROPOUT, "torch.nn.Dropout2d": _DROPOUT,
    "torch.nn.Dropout3d": _DROPOUT, "torch.nn.functional.dropout": _DROPOUT, "torch.nn.functional.dropout1d": _DROPOUT,
    "torch.nn.functional.dropout2d": _DROPOUT, "torch.nn.functional.dropout3d": _DROPOUT, "torch.dropout": _DROPOUT,
    "torch.Tensor.dropout": _DROPOUT, "torch.nn.functional.alpha_dropout": _DROPOUT,
}
# Modules whose import the sandbox refuses outright: not imported by torch itself, so an import
# in the sandbox can only come from the learner.
RUNTIME_MODULES = ("qkv", "tiktoken", "tokenizers", "sentencepiece", "transformers", "functorch")
# Banned names the run-time layer does not cover (book/instructors.md, "Known limits"): torch imports
# these modules itself, or they are built only from operators that are allowed in their exercise.
STATIC_ONLY = (*ALWAYS_BANNED_NAMES, "torch.optim", "torch.optim.lr_scheduler", "torch.autograd", "torch.func",
               "torch.Tensor.backward", "torch.utils.flop_counter", "numpy.interp", "torch.nn.Transformer",
               "torch.nn.TransformerEncoder", "torch.nn.TransformerEncoderLayer", "torch.nn.TransformerDecoder",
               "torch.nn.TransformerDecoderLayer", "torch.nn.InstanceNorm2d", "torch.nn.InstanceNorm3d")


@dataclass(frozen=True)
class Hit:
    name: str  # the banned dotted name
    line: int

    def describe(self) -> str:
        if self.name.split(".")[0] in ALWAYS_BANNED_MODULES:
            return f"imports {self.name} (line {self.line}): answers must not use the course library"
        return f"calls {self.name} (line {self.line}), which this exercise asks you to implement yourself"


def banned_for(assignment: str) -> dict[str, list[str]]:
    """The BANNED table of ``qkv.checks.<assignment>``, with ``ALWAYS_BANNED_NAMES`` for every
    function ("*"); {} if the assignment has no checks module."""
    try:
        module = importlib.import_module(f"qkv.checks.{assignment}")
    except ImportError:
        return {}
    table = dict(getattr(module, "BANNED", {}))
    table["*"] = [*table.get("*", []), *ALWAYS_BANNED_NAMES]
    return table


def in_place_for(assignment: str) -> dict[str, tuple[str, ...]]:
    """The ``IN_PLACE`` table of ``qkv.checks.<assignment>``: graded function -> the arguments its
    contract lets it change in place (their new values go back to the caller); {} if none. The
    grader's own copies of every other argument stay as they were sent (guarantee 14)."""
    try:
        module = importlib.import_module(f"qkv.checks.{assignment}")
    except ImportError:
        return {}
    return {name: tuple(args) for name, args in dict(getattr(module, "IN_PLACE", {})).items()}


def runtime_denials(banned: list[str]) -> tuple[dict[str, str], list[str]]:
    """What the sandbox blocks while a function with the banned names ``banned`` runs:
    (aten op packet -> the banned name it stands for, module names refused on import)."""
    ops: dict[str, str] = {}
    for name in banned:
        for packet in RUNTIME_OPS.get(name, []):
            ops.setdefault(packet, name)
    modules = [m for m in RUNTIME_MODULES if m in ALWAYS_BANNED_MODULES or m in banned]
    return ops, modules


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(aliases.get(node.id, node.id))
        return ".".join(reversed(parts))
    return None


def find(source: str, banned: list[str]) -> list[Hit]:
    """Banned names used in ``source``; an unparsable source has none (it fails on its own)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    banned_set = set(banned)
    methods = {b.rsplit(".", 1)[1] for b in banned if b.startswith("torch.Tensor.")}
    short = {b.rsplit(".", 1)[-1]: b for b in banned}
    aliases: dict[str, str] = {}
    hits: list[Hit] = []

    def is_banned(dotted: str) -> str | None:
        for b in banned_set:
            if dotted == b or dotted.startswith(b + "."):
                return b
        root = dotted.split(".")[0]
        if root in ALWAYS_BANNED_MODULES:
            return root
        return None

    for node in ast.walk(tree):  # aliases first, wherever they are imported
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[(a.asname or a.name).split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                if (hit := is_banned(a.name)):
                    hits.append(Hit(hit if hit in ALWAYS_BANNED_MODULES else a.name, node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                aliases[a.asname or a.name] = full
                if (hit := is_banned(full)) or (hit := is_banned(node.module)):
                    hits.append(Hit(hit, node.lineno))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node, aliases)
            if dotted and (hit := is_banned(dotted)):
                hits.append(Hit(hit, node.lineno))
            elif node.attr in methods:
                hits.append(Hit(f"torch.Tensor.{node.attr}", node.lineno))
        elif isinstance(node, ast.Name) and node.id in aliases and (hit := is_banned(aliases[node.id])):
            hits.append(Hit(hit, node.lineno))
        elif isinstance(node, ast.Call):
            fn = _dotted(node.func, aliases) or ""
            literal = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if fn in ("getattr", "builtins.getattr") and len(literal) >= 1 and literal[0] in short:
                hits.append(Hit(short[literal[0]], node.lineno))
            imports = fn in ("__import__", "importlib.import_module")
            if imports and literal and literal[0].split(".")[0] in ALWAYS_BANNED_MODULES:
                hits.append(Hit(literal[0], node.lineno))
    unique = {(h.name, h.line): h for h in hits}
    return sorted(unique.values(), key=lambda h: (h.line, h.name))
