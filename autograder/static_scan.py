"""The static layer of banned calls: over what actually runs, and only where a graded function reaches.

Each learner cell is first transformed exactly as the cell runner will run it (IPython syntax
becomes ``get_ipython().run_cell_magic(...)`` calls: ``notebook_contract.transform``); the bodies
of magics that run Python (``%%time``, ``%timeit``, ``%%capture``, ...) and constant ``exec`` /
``eval`` strings are read as code too. The grader sends the sandbox exactly the text read here
(``Scan.runnable``); a cell that cannot be read is not run at all, and says so.

Across all cells, in notebook order, module-level bindings are followed as Python makes them:
imports and aliases (``sm = F.softmax`` in one cell, ``sm(x)`` in another), star imports
(``from torch.special import *``), functions, lambdas, classes, decorators, default arguments and
``global`` assignments. That gives a graph of the learner's functions and of the values bound to
names. A graded function is penalised for a banned name only when the name is **reachable** from
it when the grader calls it:

- a function reaches everything its body (and its decorators and defaults) uses, called or not;
- top-level code runs once, while the notebook loads: what it only *calls* is scratch (printing
  ``torch.softmax(x)`` next to one's own softmax costs nothing), and a value computed at load
  (``expected = torch.softmax(x)``) is a tensor, not a call;
- what top-level code *holds or stores away* counts: a banned function object bound to a name a
  graded function uses (directly, through a factory, a ``global`` assignment, a loop variable), or
  stored in an attribute or a container (``builtins.sm = ...``, ``d["sm"] = ...``), where any
  function could find it (an honest notebook has no reason to). What top-level code stores through
  calls (``setattr``, a registry) is left to the run-time layer, like load-time poisoning in general.

Names built at run time escape any static reading; the sandbox's run-time layer refuses the
operators they reach (``sandbox_worker._arm``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from autograder.banned import ALWAYS_BANNED_MODULES

# Magics whose body (or line) the cell runner runs as Python in the learner's namespace.
PYTHON_CELL_MAGICS = frozenset({"time", "prun", "capture", "timeit"})
PYTHON_LINE_MAGICS = frozenset({"time", "timeit"})

# How a node is reached: CALL (it runs when the graded function is called, or is held to be
# called later), RAN (it ran while the notebook loaded: only what it holds or stores matters).
CALL, RAN = "call", "ran"


def transform(source: str) -> str:
    """The cell as the runner executes it; raises (SyntaxError, or whatever IPython raises) when
    it cannot be transformed."""
    from qkv.notebook_contract import transform as contract_transform

    return contract_transform(source)


@dataclass(frozen=True)
class Use:
    """A banned name reachable from a graded function, and where it is, for the learner."""

    name: str  # the banned dotted name (or the banned module)
    cell: str
    line: int
    where: str = ""

    def describe(self) -> str:
        cell = f" of cell {self.cell.removeprefix('cell-')}" if self.cell.startswith("cell-") else (
            f" of your `{self.cell}` cell" if self.cell else "")
        place = ", ".join(p for p in (f"line {self.line}{cell}" if self.line else "", self.where) if p)
        place = f" ({place})" if place else ""
        if self.name.split(".")[0] in ALWAYS_BANNED_MODULES:
            return f"imports {self.name}{place}: answers must not use the course library"
        return f"calls {self.name}{place}, which this exercise asks you to implement yourself"


@dataclass
class _Node:
    """A learner function (``function``: its body runs when called) or a value computed while the
    notebook loads (``value``)."""

    label: str
    kind: str
    # (kind "path" | "method" | "getattr", key, cell, line, called)
    uses: list[tuple[str, str, str, int, bool]] = field(default_factory=list)
    edges: set[tuple[int, bool]] = field(default_factory=set)  # (node, called)
    deferred: list[tuple[str, tuple[str, ...], str, int, bool]] = field(default_factory=list)  # globals, resolved last


Value = tuple[str, object]  # ("path", "torch.nn.functional") or ("node", node index)


@dataclass
class Scan:
    uses: dict[str, list[Use]]  # graded function -> the banned uses reachable from it
    problems: dict[str, str]  # cell id -> why it could not be read (it does not run)
    runnable: dict[str, str]  # cell id -> the exact code the sandbox runs


def scan(cells: list[dict], banned: dict[str, list[str]], trusted: frozenset[str] = frozenset()) -> Scan:
    """``cells``: [{"id", "source"}] in notebook order; ``banned``: graded function -> its banned
    dotted names; ``trusted``: ids of the reference's own cells (read for their bindings, never
    blamed: their uses are not recorded)."""
    return _Scanner(banned).run(cells, trusted)


class _Scope:
    """A function's own names: locals (opaque), its imports, its ``global`` declarations."""

    def __init__(self, outer: _Scope | None = None):
        self.locals: set[str] = set(outer.locals) if outer else set()
        self.imports: dict[str, set[Value]] = dict(outer.imports) if outer else {}
        self.globals: set[str] = set()


class _Scanner:
    def __init__(self, banned: dict[str, list[str]]):
        self.banned = banned
        self.all_banned = sorted({b for names in banned.values() for b in names})
        self.nodes: list[_Node] = []
        self.table: dict[str, set[Value]] = {}
        self.escaped = self.new_node("stored away by top-level code, where any function could reach it", "value")
        self.cell, self.trusted, self.conditional = "", False, 0

    # ----------------------------------------------------------------- driver

    def run(self, cells: list[dict], trusted: frozenset[str]) -> Scan:
        problems, runnable = {}, {}
        for cell in cells:
            self.cell, self.trusted = cell["id"], cell["id"] in trusted
            try:
                code = transform(cell["source"])
                tree = ast.parse(code)
            except Exception as exc:  # noqa: BLE001 - IPython's transformer may raise anything on odd input
                line = getattr(exc, "lineno", None)
                why = f"line {line}: {getattr(exc, 'msg', exc)}" if line else type(exc).__name__
                problems[cell["id"]] = (f"this cell is not valid Python ({why}), so the grader could not check it "
                                        "for banned calls and did not run it")
                runnable[cell["id"]] = f"raise SyntaxError({problems[cell['id']]!r})"
                continue
            runnable[cell["id"]] = code
            self.block(tree.body)
        return Scan(self.results(), problems, runnable)

    def results(self) -> dict[str, list[Use]]:
        for node in self.nodes:
            for name, chain, cell, line, called in node.deferred:
                for value in self.table.get(name, set()):
                    self.link(node, value, chain, cell, line, called)
        out = {}
        for function, names in self.banned.items():
            uses: list[Use] = []
            start: list[tuple[int, str]] = [(self.escaped, CALL)]
            for kind, what in self.table.get(function, set()):
                if kind == "node":
                    start.append((what, CALL))
                elif (hit := self.banned_path(what, names)):
                    uses.append(Use(hit, "", 0, f"`{function}` is {what} itself"))
            seen: set[tuple[int, str]] = set()
            while start:
                index, mode = start.pop()
                if (index, mode) in seen:
                    continue
                seen.add((index, mode))
                node = self.nodes[index]
                counts = (lambda called: True) if (node.kind == "function" and mode == CALL) else (
                    (lambda called: not called) if mode == CALL or node.kind == "function" else (lambda called: False))
                where = self.where(index, function)
                found = [(kind, key, cell, line) for kind, key, cell, line, called in node.uses if counts(called)]
                paths = {(cell, line, key.rsplit(".", 1)[-1]) for kind, key, cell, line in found if kind == "path"}
                for kind, key, cell, line in found:
                    if kind != "path" and (cell, line, key) in paths:
                        continue  # F.softmax: the path says it, the method name would say it twice
                    if (hit := self.hit(kind, key, names)):
                        uses.append(Use(hit, cell, line, where))
                for target, called in node.edges:
                    if node.kind == "function" and mode == CALL:
                        start.append((target, CALL))
                    elif node.kind == "value" and mode == RAN:
                        start.append((target, RAN))  # it was called while loading: so was what it held
                    else:
                        start.append((target, RAN if called else CALL))
            out[function] = sorted({(u.cell, u.line, u.name): u for u in uses}.values(), key=lambda u: (u.cell, u.line))
        return out

    def where(self, index: int, function: str) -> str:
        node = self.nodes[index]
        if index == self.escaped:
            return node.label
        if node.kind == "function" and node.label != f"`{function}`":
            return f"in {node.label}, which {function} can reach"
        return ""

    def hit(self, kind: str, key: str, names: list[str]) -> str | None:
        if kind == "path":
            return self.banned_path(key, names)
        if kind == "method":  # x.softmax(...): the tensor method spelling
            return next((b for b in names if b.startswith("torch.Tensor.") and b.rsplit(".", 1)[1] == key), None)
        return next((b for b in names if b.rsplit(".", 1)[-1] == key), None)  # getattr(obj, "softmax")

    @staticmethod
    def banned_path(path: str, names: list[str]) -> str | None:
        for b in names:
            if path == b or path.startswith(b + "."):
                return b
        root = path.split(".")[0]
        return root if root in ALWAYS_BANNED_MODULES else None

    # ----------------------------------------------------------------- nodes and values

    def new_node(self, label: str, kind: str) -> int:
        self.nodes.append(_Node(label, kind))
        return len(self.nodes) - 1

    def use(self, node: int, kind: str, key: str, line: int, called: bool) -> None:
        if not self.trusted:
            self.nodes[node].uses.append((kind, key, self.cell, line, called))

    def link(self, node: _Node | int, value: Value, chain: tuple[str, ...], cell: str, line: int,
             called: bool) -> None:
        node = self.nodes[node] if isinstance(node, int) else node
        kind, what = value
        if kind == "path":
            if cell is not None:
                node.uses.append(("path", ".".join((what, *chain)), cell, line, called))
        else:
            node.edges.add((what, called and not chain))

    def bind(self, name: str, values: set[Value]) -> None:
        if self.conditional:
            self.table.setdefault(name, set()).update(values)
        else:
            self.table[name] = set(values)

    def lookup(self, expr: ast.expr) -> set[Value] | None:
        """The values of a name or attribute chain (an alias), when they are known."""
        chain = _chain(expr)
        if chain is None or not self.table.get(chain[0]):
            return None
        out: set[Value] = set()
        for kind, what in self.table[chain[0]]:
            if kind == "path":
                out.add(("path", ".".join((what, *chain[1]))))
            elif not chain[1]:
                out.add((kind, what))
            else:
                return None
        return out

    # ----------------------------------------------------------------- top-level statements

    def block(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            self.statement(stmt)

    def statement(self, stmt: ast.stmt) -> None:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            self.import_stmt(stmt, None, None)
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            self.bind(stmt.name, {("node", self.function(stmt, None, f"`{stmt.name}`"))})
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            if stmt.value is None:
                return
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            value = self.value(stmt.value)
            for target in targets:
                self.assign(target, stmt.value, value, augment=isinstance(stmt, ast.AugAssign))
        elif isinstance(stmt, (ast.For, ast.AsyncFor)):
            self.assign(stmt.target, None, self.value(stmt.iter), element=True)
            self.conditionally(stmt.body, stmt.orelse)
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            for item in stmt.items:
                value = self.value(item.context_expr)
                if item.optional_vars is not None:
                    self.assign(item.optional_vars, None, value)
            self.block(stmt.body)
        elif isinstance(stmt, (ast.If, ast.While)):
            self.stored(stmt.test)
            self.conditionally(stmt.body, stmt.orelse)
        elif isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            self.conditionally(stmt.body, stmt.orelse, stmt.finalbody, *(h.body for h in stmt.handlers))
        elif type(stmt).__name__ == "Match":
            self.stored(stmt.subject)
            self.conditionally(*(case.body for case in stmt.cases))
        elif isinstance(stmt, ast.Delete):
            for target in stmt.targets:
                if isinstance(target, ast.Name) and not self.conditional:
                    self.table.pop(target.id, None)
                elif not isinstance(target, ast.Name):
                    self.stored(target)
        else:  # expression statements and the rest: only what they store away matters
            for child in ast.iter_child_nodes(stmt):
                if isinstance(child, ast.expr):
                    self.stored(child)

    def conditionally(self, *blocks: list[ast.stmt]) -> None:
        self.conditional += 1
        for block in blocks:
            self.block(block)
        self.conditional -= 1

    def assign(self, target: ast.expr, expr: ast.expr | None, value: int, augment: bool = False,
               element: bool = False) -> None:
        """Bind ``target`` to the value node ``value`` (of ``expr``); anything but a name is a store
        that any code could reach afterwards."""
        if isinstance(target, ast.Name):
            values = ((None if element else self.lookup(expr)) if expr is not None else None) or {("node", value)}
            if augment:
                values |= self.table.get(target.id, set())
            self.bind(target.id, values)
        elif isinstance(target, (ast.Tuple, ast.List)):
            elts = expr.elts if isinstance(expr, (ast.Tuple, ast.List)) and len(expr.elts) == len(target.elts) else None
            for i, t in enumerate(target.elts):
                inner = t.value if isinstance(t, ast.Starred) else t
                self.assign(inner, elts[i] if elts else None, self.value(elts[i]) if elts else value)
        else:  # x.attr = ..., d[k] = ...: stored where any function may find it
            self.nodes[self.escaped].edges.add((value, False))
            self.value(target)

    def value(self, expr: ast.expr) -> int:
        """A node for the value of a top-level expression (computed while the notebook loads)."""
        node = self.new_node("a value", "value")
        self.collect(expr, node, None)
        return node

    def stored(self, expr: ast.expr) -> None:
        """Top-level code whose value nobody keeps (``print(torch.softmax(x))``, ``compare()``): read
        for the code it runs (magics, exec); it reaches no graded function by itself. What it may
        store through calls (``setattr(...)``, a registry) is the run-time layer's concern."""
        self.value(expr)

    # ----------------------------------------------------------------- imports

    def import_stmt(self, stmt, node: int | None, scope: _Scope | None) -> None:
        """At the top level (``node`` None) an import binds names; in a function it binds locals
        and, when it runs, uses what it imports."""
        owner = node if node is not None else self.escaped
        if isinstance(stmt, ast.Import):
            for a in stmt.names:
                name = a.asname or a.name.split(".")[0]
                self.bind_import(name, {("path", a.name if a.asname else a.name.split(".")[0])}, scope)
                if node is not None:  # in a function: it imports when the function runs
                    self.use(owner, "path", a.name, stmt.lineno, False)
            return
        if not stmt.module or stmt.level:
            return  # a relative import: there is no package here
        for a in stmt.names:
            if a.name == "*":
                if self.banned_path(stmt.module, []):  # names of the course library: unknown, so stored away
                    self.use(owner, "path", stmt.module, stmt.lineno, False)
                prefix = stmt.module + "."
                for b in self.all_banned:
                    if b.startswith(prefix):
                        first = b[len(prefix):].split(".")[0]
                        self.bind_import(first, {("path", prefix + first)}, scope)
                continue
            full = f"{stmt.module}.{a.name}"
            self.bind_import(a.asname or a.name, {("path", full)}, scope)
            if node is not None:
                self.use(owner, "path", full, stmt.lineno, False)

    def bind_import(self, name: str, values: set[Value], scope: _Scope | None) -> None:
        if scope is None:
            self.bind(name, values)
        else:
            scope.imports[name] = values

    # ----------------------------------------------------------------- functions

    def function(self, stmt, outer: _Scope | None, label: str) -> int:
        """A node for a def, class or lambda: its body, decorators and default arguments."""
        node = self.new_node(label, "function")
        scope = _scope_of(stmt, outer)
        for expr in [*getattr(stmt, "decorator_list", []), *getattr(stmt, "bases", []),
                     *(k.value for k in getattr(stmt, "keywords", []))]:
            self.collect(expr, node, outer)
        args = getattr(stmt, "args", None)
        if args is not None:
            for default in [*args.defaults, *(d for d in args.kw_defaults if d is not None)]:
                self.collect(default, node, outer)
        body = stmt.body if isinstance(stmt.body, list) else [stmt.body]
        for part in body:
            if isinstance(part, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):  # a method, a closure
                self.nodes[node].edges.add((self.function(part, scope, _label(part)), False))
            else:
                self.collect(part, node, scope)
        return node

    def collect(self, tree: ast.AST, node: int, scope: _Scope | None) -> None:
        """Record in ``node`` what ``tree`` uses. ``scope``: the enclosing function's names (None at
        the top level, where names are resolved now; in a function they are resolved with the final
        bindings, since functions run after the notebook has loaded). Nested functions and lambdas
        become nodes of their own, held by this one."""
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
        callees = {id(c) for n in calls for c in _chain_nodes(n.func)} | {id(n.func) for n in calls}
        inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}  # a.b in a.b.c
        todo = [tree]
        while todo:
            sub = todo.pop()
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)) and sub is not tree:
                nested = self.function(sub, scope if scope is not None else _Scope(), _label(sub))
                self.nodes[node].edges.add((nested, False))
                continue
            if isinstance(sub, (ast.Import, ast.ImportFrom)):
                self.import_stmt(sub, node, scope if scope is not None else _Scope())
                continue
            if isinstance(sub, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and scope is not None:
                for target in (sub.targets if isinstance(sub, ast.Assign) else [sub.target]):
                    if isinstance(target, ast.Name) and target.id in scope.globals:  # global x; x = ...
                        self.table.setdefault(target.id, set()).add(("node", node))
            if isinstance(sub, ast.Call):
                self.literal_lookups(sub, node, scope, id(sub) in callees)
            todo.extend(ast.iter_child_nodes(sub))
            if not isinstance(sub, (ast.Name, ast.Attribute)) or isinstance(getattr(sub, "ctx", None), ast.Store):
                continue
            called = id(sub) in callees
            if isinstance(sub, ast.Attribute):
                self.use(node, "method", sub.attr, sub.lineno, called)
            chain = _chain(sub)
            if chain is None or id(sub) in inner:
                continue
            root, attrs = chain
            if scope is not None and root in scope.imports:
                for value in scope.imports[root]:
                    self.link(node, value, attrs, self.cell if not self.trusted else None, sub.lineno, called)
            elif scope is not None and root in scope.locals:
                continue
            elif scope is not None:
                if not self.trusted:
                    self.nodes[node].deferred.append((root, attrs, self.cell, sub.lineno, called))
            else:
                for value in self.table.get(root, set()):
                    self.link(node, value, attrs, self.cell if not self.trusted else None, sub.lineno, called)

    def literal_lookups(self, call: ast.Call, node: int, scope: _Scope | None, called: bool) -> None:
        """getattr(x, "softmax"), __import__("qkv"), importlib.import_module("qkv"), exec("code"),
        and the bodies of magics that the cell runner executes as Python."""
        args = [_const(a) for a in call.args]
        func = call.func
        name = func.id if isinstance(func, ast.Name) else (func.attr if isinstance(func, ast.Attribute) else "")
        if name == "getattr" and len(args) >= 2 and args[1] is not None:
            self.use(node, "getattr", args[1], call.lineno, called)
        elif name in ("__import__", "import_module") and args and args[0] is not None:
            self.use(node, "path", args[0], call.lineno, False)
        elif name in ("exec", "eval", "compile") and args and args[0] is not None:
            self.embedded(args[0], node, scope)
        elif name == "run_cell_magic" and len(args) >= 3 and None not in args[:3]:
            if args[0] in PYTHON_CELL_MAGICS:
                self.embedded(args[2], node, scope)
            elif args[0] == "writefile" and args[1].strip().endswith(".py"):
                self.embedded(args[2], self.escaped, _Scope())  # a module any code may import later
        elif name == "run_line_magic" and len(args) >= 2 and args[0] in PYTHON_LINE_MAGICS and args[1] is not None:
            self.embedded(args[1], node, scope)

    def embedded(self, source: str, node: int, scope: _Scope | None) -> None:
        """Code held in a string that runs as written: at the top level it is more top-level code;
        in a function, part of that function."""
        try:
            tree = ast.parse(transform(source))
        except Exception:  # noqa: BLE001 - it fails the same way when it runs
            return
        if scope is None and node != self.escaped:
            self.block(tree.body)
        else:
            self.collect(tree, node, scope if scope is not None else _Scope())


def _scope_of(stmt, outer: _Scope | None) -> _Scope:
    scope = _Scope(outer)
    args = getattr(stmt, "args", None)
    if args is not None:
        scope.locals |= {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
        scope.locals |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
    body = stmt.body if isinstance(stmt.body, list) else [stmt.body]
    todo = list(body)
    while todo:
        sub = todo.pop()
        if isinstance(sub, ast.Global):
            scope.globals |= set(sub.names)
        elif isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)):
            scope.locals.add(sub.id)
        elif isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            scope.locals.add(sub.name)
            continue  # its own body is its own scope
        elif isinstance(sub, ast.ExceptHandler) and sub.name:
            scope.locals.add(sub.name)
        elif isinstance(sub, (ast.Import, ast.ImportFrom)):
            continue  # imports are tracked as imports, not as opaque locals
        if not isinstance(sub, ast.Lambda):
            todo.extend(ast.iter_child_nodes(sub))
    scope.locals -= scope.globals
    return scope


def _label(node) -> str:
    return f"`{node.name}`" if hasattr(node, "name") else f"a lambda (line {node.lineno})"


def _const(expr: ast.expr) -> str | None:
    return expr.value if isinstance(expr, ast.Constant) and isinstance(expr.value, str) else None


def _chain(expr: ast.expr) -> tuple[str, tuple[str, ...]] | None:
    """``a.b.c`` -> ("a", ("b", "c")); None for anything else."""
    attrs = []
    while isinstance(expr, ast.Attribute):
        attrs.append(expr.attr)
        expr = expr.value
    if isinstance(expr, ast.Name):
        return expr.id, tuple(reversed(attrs))
    return None


def _chain_nodes(expr: ast.expr):
    """The Attribute/Name nodes of a callee's chain (``F.softmax`` in ``F.softmax(x)``)."""
    while isinstance(expr, ast.Attribute):
        yield expr
        expr = expr.value
    if isinstance(expr, ast.Name):
        yield expr
