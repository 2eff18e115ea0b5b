"""Static detection of calls an exercise forbids (the built-in it asks learners to write).

Each chapter's ``qkv/checks/<slug>.py`` declares ``BANNED``: graded function name
(or ``"*"`` for all) -> dotted names such as ``torch.softmax``. A ``torch.Tensor.X``
entry also bans the method spelling ``x.X(...)``. Importing ``qkv`` is banned in
every answer. Aliases (``import torch.nn.functional as F``, ``from torch import
softmax as s``) and ``getattr(obj, "name")`` with a literal name are resolved.

Known limit: this is static analysis. Names built at run time
(``getattr(torch, "soft" + "max")``, ``eval``) are not seen.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass

ALWAYS_BANNED_MODULES = ("qkv",)


@dataclass(frozen=True)
class Hit:
    name: str  # the banned dotted name
    line: int

    def describe(self) -> str:
        if self.name.split(".")[0] in ALWAYS_BANNED_MODULES:
            return f"imports {self.name} (line {self.line}): answers must not use the course library"
        return f"calls {self.name} (line {self.line}), which this exercise asks you to implement yourself"


def banned_for(assignment: str) -> dict[str, list[str]]:
    """The BANNED table of ``qkv.checks.<assignment>``, or {} if it declares none."""
    try:
        module = importlib.import_module(f"qkv.checks.{assignment}")
    except ImportError:
        return {}
    return dict(getattr(module, "BANNED", {}))


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
            if fn in ("__import__", "importlib.import_module") and literal and literal[0].split(".")[0] in ALWAYS_BANNED_MODULES:
                hits.append(Hit(literal[0], node.lineno))
    unique = {(h.name, h.line): h for h in hits}
    return sorted(unique.values(), key=lambda h: (h.line, h.name))
