"""Build the book's editions and keep the Chinese catalogs current.

    python book/editions.py build [en|zh_CN|all] [--always]   # strict, offline builds; prints where the HTML is
    python book/editions.py translations           # regenerate the .pot files, update the .po files

One source, two editions. The pages (``book/**/*.md``) are written in English; the Chinese
edition is the same pages built by Sphinx with ``language: zh_CN`` and the message catalogs in
``book/locales/zh_CN/LC_MESSAGES`` (Sphinx's own gettext mechanism, managed with sphinx-intl).
Both editions read one execution cache, so every cell runs once and the two editions show the
same code, outputs and figures. The Chinese build's configuration is ``_config.yml`` plus the
few overrides in :func:`edition_config`; it is written to ``book/_build/zh_CN/_config.yml``
at build time, never kept as a second copy. An edition whose inputs (pages, configuration,
extensions, catalogs, the ``qkv`` library, the installed packages) did not change since its last
strict build is not built again (``--always`` builds anyway).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import yaml

BOOK = Path(__file__).resolve().parent
BUILD = BOOK / "_build"
LOCALES = BOOK / "locales"
CACHE = BUILD / ".jupyter_cache"  # jupyter-book's default for the English build: shared by both
# The gettext builder needs doctrees of its own (Sphinx refuses to share them with the HTML
# builder): it builds from a separate output path, reading the same execution cache.
GETTEXT_OUT = BUILD / "i18n"
GETTEXT = GETTEXT_OUT / "_build" / "gettext"
EDITIONS = ("en", "zh_CN")
LABELS = {"en": "English", "zh_CN": "中文版"}
GENERATED = "generated"  # the catalog of text that code cells generate (book/_ext/editions.py)


def html_dir(edition: str) -> Path:
    """Where an edition's HTML is written (jupyter-book appends ``_build/html`` to its output path)."""
    return BUILD / "html" if edition == "en" else BUILD / edition / "_build" / "html"


def _output_path(edition: str) -> Path:
    return BOOK if edition == "en" else BUILD / edition


def _relocated_config() -> dict:
    """``_config.yml`` made usable from another folder, reading the English execution cache."""
    config = yaml.safe_load((BOOK / "_config.yml").read_text(encoding="utf-8"))
    config.setdefault("execute", {})["cache"] = str(CACHE)
    sphinx = config.setdefault("sphinx", {})
    # Paths in a configuration file are read relative to it: make the local extensions absolute.
    sphinx["local_extensions"] = {name: str((BOOK / path).resolve())
                                  for name, path in (sphinx.get("local_extensions") or {}).items()}
    return config


def _write_config(config: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "_config.yml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def edition_config(edition: str) -> dict:
    """``_config.yml`` with the overrides of ``edition`` (the English edition has none)."""
    if edition == "en":
        return yaml.safe_load((BOOK / "_config.yml").read_text(encoding="utf-8"))
    config = _relocated_config()
    config["title"] = _translated(edition, config["title"])  # the sidebar's book title
    settings = config["sphinx"].setdefault("config", {})
    settings["language"] = edition
    settings["qkv_edition"] = edition
    english_root = "../" * len(html_dir(edition).relative_to(BUILD).parts) + "html"
    settings["qkv_other_edition"] = {"label": LABELS["en"], "root": english_root, "lang": "en"}
    return config


def edition_toc(edition: str) -> dict:
    """``_toc.yml`` with its part captions (the sidebar's section names) in ``edition``'s language.

    Sphinx extracts toctree captions into the root page's catalog but does not apply their
    translations to the sidebar, which sphinx-external-toc builds from this file: so the Chinese
    build gets a copy of the table of contents with translated captions.
    """
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text(encoding="utf-8"))
    for part in toc.get("parts", []):
        if "caption" in part:
            part["caption"] = _translated(edition, part["caption"])
    return toc


def _translated(edition: str, text: str) -> str:
    """``text``'s translation in ``edition``'s catalogs, or ``text`` when it has none."""
    from babel.messages.pofile import read_po

    for po in sorted((LOCALES / edition / "LC_MESSAGES").rglob("*.po")):
        with po.open("rb") as fh:
            message = read_po(fh).get(text)
        if message is not None and message.string and not message.fuzzy:
            return message.string
    return text


def _jupyter_book() -> str:
    return str(Path(sys.executable).parent / "jupyter-book")


# What a build reads, besides the installed packages: the book's sources, configuration,
# extensions, vendored assets and catalogs, and the library its pages import.
INPUT_ROOTS = (BOOK, BOOK.parent / "qkv")
STAMP = ".qkv-inputs"  # next to an edition's html/ folder: the inputs its last strict build read


def inputs_fingerprint(edition: str, strict: bool) -> str:
    """A digest of every input file's path, size and modification time (``INPUT_ROOTS``, build
    outputs and caches left out), the installed packages' folder and the interpreter: what
    ``make`` would compare. Changing, adding or removing any input changes it."""
    digest = hashlib.sha256(f"{edition}\0{strict}\0{sys.version}\0{sys.executable}\n".encode())
    for folder in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]):
        digest.update(f"{folder}\0{os.stat(folder).st_mtime_ns}\n".encode())  # a package installed or removed
    for root in INPUT_ROOTS:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in ("_build", "__pycache__", ".ipynb_checkpoints"))
            for name in sorted(filenames):
                if name.endswith(".mo"):  # compiled from the .po files by the build itself
                    continue
                st = os.stat(os.path.join(dirpath, name))
                digest.update(f"{dirpath}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _stamp(edition: str) -> Path:
    return html_dir(edition).parent / STAMP


def up_to_date(edition: str, strict: bool = True) -> bool:
    """Whether ``edition`` was built strictly from exactly the current inputs (and is still there)."""
    stamp = _stamp(edition)
    return ((html_dir(edition) / "index.html").is_file() and stamp.is_file()
            and stamp.read_text(encoding="utf-8") == inputs_fingerprint(edition, strict))


def build(edition: str, *, strict: bool = True, always: bool = False) -> Path:
    """Build one edition; return its HTML folder. Raises CalledProcessError when the build fails.

    Like ``make``, skips the build when no input changed since the last strict build of this
    edition (Sphinx's own no-change rebuild still costs seconds: starting up, and formatting
    every bibliography again); ``always`` builds anyway.
    """
    if edition not in EDITIONS:
        raise ValueError(f"unknown edition {edition!r}; choose one of {', '.join(EDITIONS)}")
    fingerprint = inputs_fingerprint(edition, strict)  # before the build: an edit made during it counts
    if not always and up_to_date(edition, strict):
        print(f"{LABELS[edition]}: up to date (no input changed since its last build)")
        return html_dir(edition)
    _stamp(edition).unlink(missing_ok=True)
    command = [_jupyter_book(), "build", str(BOOK)]
    if edition != "en":
        out = _output_path(edition)
        out.mkdir(parents=True, exist_ok=True)
        toc = out / "_toc.yml"
        toc.write_text(yaml.safe_dump(edition_toc(edition), allow_unicode=True, sort_keys=False), encoding="utf-8")
        command += ["--config", str(_write_config(edition_config(edition), out)), "--toc", str(toc),
                    "--path-output", str(out)]
    if strict:
        command += ["-W", "-n", "--keep-going"]
    subprocess.run(command, check=True)
    _stamp(edition).write_text(fingerprint, encoding="utf-8")
    return html_dir(edition)


def extract_templates() -> dict[str, set[str]]:
    """Write the .pot catalogs of the current pages to ``book/_build/i18n/_build/gettext``;
    return each catalog's name (``chapters/attention``, ``generated/chapters/attention``) and msgids.

    Prose: Sphinx's gettext builder, one catalog per page. Generated HTML (quizzes, drill,
    course map): the strings marked in the English edition's pages (``qkv.i18n``) that no prose
    catalog already holds, one ``generated/<page>`` catalog per page, and the strings several
    pages share in ``generated/common``. Builds the English edition first (its execution cache
    makes that quick when nothing changed).
    """
    from babel.messages.catalog import Catalog
    from babel.messages.pofile import read_po, write_po

    from qkv.i18n import marked_strings

    build("en")
    shutil.rmtree(GETTEXT, ignore_errors=True)  # a page removed from the book leaves no catalog behind
    subprocess.run([_jupyter_book(), "build", str(BOOK), "--builder", "custom", "--custom-builder", "gettext",
                    "--config", str(_write_config(_relocated_config(), GETTEXT_OUT)),
                    "--path-output", str(GETTEXT_OUT)], check=True, stdout=subprocess.DEVNULL)
    templates: dict[str, set[str]] = {}
    for pot in sorted(GETTEXT.rglob("*.pot")):
        with pot.open("rb") as fh:
            templates[str(pot.relative_to(GETTEXT).with_suffix(""))] = {m.id for m in read_po(fh) if m.id}
    prose = set().union(*templates.values())
    english = html_dir("en")
    pages_of: dict[str, list[str]] = {}
    for page in sorted(english.rglob("*.html")):
        if "_static" in page.parts or "_sources" in page.parts:
            continue
        name = str(page.relative_to(english).with_suffix(""))
        for msgid, _ in marked_strings(page.read_text(encoding="utf-8")):
            if msgid not in prose and name not in pages_of.setdefault(msgid, []):
                pages_of[msgid].append(name)
    catalogs: dict[str, Catalog] = {}
    for msgid, pages in pages_of.items():
        name = f"{GENERATED}/{pages[0] if len(pages) == 1 else 'common'}"
        catalog = catalogs.setdefault(name, Catalog(project="qkv", fuzzy=False))
        catalog.add(msgid, locations=[(f"{page}.html", 0) for page in pages])
    for name, catalog in catalogs.items():
        for message in catalog:
            message.flags.discard("python-brace-format")  # braces here are MyST roles, not formats
        pot = GETTEXT / f"{name}.pot"
        pot.parent.mkdir(parents=True, exist_ok=True)
        with pot.open("wb") as fh:
            write_po(fh, catalog, width=0)
        templates[name] = {m.id for m in catalog if m.id}
    return templates


def translations() -> list[Path]:
    """Regenerate the .pot catalogs (``extract_templates``) and update the Chinese .po files
    with sphinx-intl: new messages appear untranslated, changed ones fuzzy, gone ones dropped."""
    extract_templates()
    languages = [arg for edition in EDITIONS[1:] for arg in ("-l", edition)]
    subprocess.run([str(Path(sys.executable).parent / "sphinx-intl"), "update", "-p", str(GETTEXT),
                    "-d", str(LOCALES), *languages, "--line-width", "0", "--no-obsolete"], check=True)
    return sorted(po for edition in EDITIONS[1:] for po in (LOCALES / edition / "LC_MESSAGES").rglob("*.po"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python book/editions.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="build the book strictly (both editions by default)")
    p.add_argument("edition", nargs="?", default="all", choices=[*EDITIONS, "all"])
    p.add_argument("--always", action="store_true", help="build even when no input changed since the last build")
    sub.add_parser("translations", help="regenerate .pot files and update the zh_CN .po files")
    args = parser.parse_args(argv)
    try:
        if args.command == "translations":
            for po in translations():
                print(f"updated {po.relative_to(BOOK.parent)}")
            return 0
        editions = EDITIONS if args.edition == "all" else (args.edition,)
        built = [(edition, build(edition, always=args.always)) for edition in editions]
    except subprocess.CalledProcessError as exc:
        print(f"book build failed ({' '.join(exc.cmd[1:3])}): see the messages above", file=sys.stderr)
        return 1
    for edition, path in built:
        print(f"Book built ({LABELS[edition]}): {path / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
