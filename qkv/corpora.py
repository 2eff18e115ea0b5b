"""Offline text corpora for the tokenization chapter.

The course must build without network access, so the English corpus is made
from text that ships with every Python installation: the docstrings of the
standard library (``pydoc.getdoc`` of each module in :data:`STDLIB_MODULES`, then
of its public classes, functions and methods, in sorted order). The text is
deterministic for a given Python version (docstrings change between releases);
this course pins Python 3.11. It is technical English prose with some code,
which is enough to show how BPE learns frequent words and affixes.
"""

from __future__ import annotations

import importlib
import inspect
import pydoc
import warnings
from functools import cache

# A fixed order: the corpus is a prefix of the concatenation, so n_bytes picks how much.
STDLIB_MODULES: tuple[str, ...] = (
    "builtins", "collections", "functools", "itertools", "json", "re", "string", "textwrap", "pathlib",
    "os", "io", "datetime", "calendar", "decimal", "fractions", "statistics", "random", "math", "heapq",
    "bisect", "dataclasses", "enum", "typing", "abc", "contextlib", "copy", "pickle", "shelve", "csv",
    "configparser", "argparse", "logging", "logging.handlers", "warnings", "traceback", "inspect", "ast",
    "tokenize", "difflib", "pprint", "reprlib", "shlex", "shutil", "tempfile", "glob", "fnmatch",
    "zipfile", "tarfile", "gzip", "bz2", "lzma", "base64", "binascii", "hashlib", "hmac", "secrets",
    "struct", "codecs", "locale", "gettext", "socket", "selectors", "ssl", "socketserver",
    "http.client", "http.server", "http.cookiejar", "http.cookies", "urllib.parse", "urllib.request",
    "email.message", "email.utils", "email.parser", "mailbox", "mimetypes", "smtplib", "imaplib", "poplib",
    "ftplib", "html", "html.parser", "xml.dom.minidom", "xml.etree.ElementTree", "xml.sax", "xmlrpc.client",
    "ipaddress", "uuid", "threading", "queue", "sched", "subprocess", "signal", "concurrent.futures",
    "multiprocessing", "asyncio", "sqlite3", "unittest", "unittest.mock", "doctest", "pdb", "trace",
    "timeit", "cmd", "optparse", "getopt", "fileinput", "filecmp", "platform", "sysconfig",
    "importlib", "pkgutil", "runpy", "dis", "pickletools", "symtable", "graphlib", "weakref", "types",
    "operator", "numbers", "cmath", "array", "colorsys", "wave", "plistlib", "netrc", "zoneinfo",
    "webbrowser", "wsgiref.simple_server", "turtle", "tkinter",
)


def _docstrings(module_name: str) -> list[str]:
    """Docstrings of a module and of its public classes, functions and methods, in sorted order."""
    try:
        with warnings.catch_warnings():  # some modules warn on import (deprecations): not our business
            warnings.simplefilter("ignore")
            module = importlib.import_module(module_name)
    except Exception:  # a module missing from this build (e.g. tkinter): skip it, deterministically
        return []
    docs = [pydoc.getdoc(module)]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
            docs.append(pydoc.getdoc(obj))
        if inspect.isclass(obj):
            for member_name, member in sorted(vars(obj).items()):
                if not member_name.startswith("_") and \
                        (inspect.isfunction(member) or inspect.ismethoddescriptor(member)):
                    docs.append(pydoc.getdoc(member))
    return [d for d in docs if d]


@cache
def _corpus_upto(n_bytes: int) -> str:
    parts: list[str] = []
    size = 0
    for module_name in STDLIB_MODULES:
        for doc in _docstrings(module_name):
            parts.append(doc)
            size += len(doc.encode("utf-8")) + 2
        if size >= n_bytes:
            break
    return "\n\n".join(parts)


def english_corpus(n_bytes: int = 130_000) -> str:
    """About ``n_bytes`` bytes (UTF-8) of English text: Python standard-library docstrings.

    Returns the longest prefix of the corpus, cut at a character boundary, whose UTF-8
    encoding has at most ``n_bytes`` bytes. Raises ValueError if ``n_bytes`` is not
    positive or exceeds what the standard library provides (about 1.0 MB on Python 3.11).
    """
    if not isinstance(n_bytes, int) or n_bytes <= 0:
        raise ValueError(f"n_bytes must be a positive int, got {n_bytes!r}")
    text = _corpus_upto(n_bytes)
    data = text.encode("utf-8")
    if len(data) < n_bytes:
        raise ValueError(f"the standard-library corpus has only {len(data):,} bytes; asked for {n_bytes:,}")
    return data[:n_bytes].decode("utf-8", errors="ignore")  # "ignore" drops a character cut in half at the end


# A few sentences each, written for this course, for the tokens-per-character experiment.
ENGLISH_SAMPLE = (
    "The weather was cold this morning, so we stayed inside and read books. "
    "In the afternoon the sun came out and the children played in the park. "
    "Machine translation systems learn to map sentences from one language to another."
)
CHINESE_SAMPLE = (
    "今天早上天气很冷，所以我们待在家里看书。"
    "下午太阳出来了，孩子们在公园里玩耍。"
    "机器翻译系统学习把一种语言的句子映射到另一种语言。"
)
