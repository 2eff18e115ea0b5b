"""Let nbgrader reuse, within one grading process, what it rebuilds for every student.

nbgrader's ``autograde`` of one student opens its gradebook about ten times (``Gradebook(url)``
in the converter and in each preprocessor). Each opening creates a new SQLAlchemy engine, so:

- every query is compiled again: SQLAlchemy caches compiled statements *per engine*;
- the schema is inspected and ``create_all`` checks every table again;

and each of the two ``CheckCellMetadata`` passes validates every cell's nbgrader metadata with
``jsonschema.validate``, which first checks the (constant) schema itself against the JSON
Schema meta-schema, for every cell. Profiled on the attention assignment (2 cores) these were
~40% of nbgrader's recording time, which runs in the grader's main process, one student after
another (SQLite has one writer), and so bounds a whole class's grading time. A new gradebook
also runs ``alembic heads`` in a subprocess to learn a constant (1.4 s per course prepared).

:func:`install` keeps one engine per database URL: its compiled-statement cache survives, while
``Gradebook.close`` still disposes the engine's connection pool, so no connection outlives a
gradebook and a database deleted and created again is opened afresh. It checks for missing
tables with one query, validates nbgrader metadata with a validator built once per schema, and
reads the alembic head once, with alembic's own API in this process. The queries, the rows
written and the validation errors are nbgrader's own; ``tests/test_nbgrader_reuse.py`` holds
the recorded gradebook equal with and without this module.

Written by hand because nbgrader has no option for any of it: the engine is created inside
``Gradebook.__init__``, the validator inside ``BaseMetadataValidator.validate_cell`` and the
subprocess inside ``get_alembic_version``.
"""

from __future__ import annotations

import functools
import threading
from functools import wraps

_LOCK = threading.Lock()
_INSTALLED = False


class _CompiledSchemas:
    """Stands in for the ``jsonschema`` module inside ``nbgrader.nbgraderformat.common``, which
    only calls ``jsonschema.validate(instance, schema)``: the same check and the same error
    (``best_match`` of the errors, as ``jsonschema.validate`` raises), with the schema checked
    and its validator built once."""

    def __init__(self):
        self._validators: dict[int, tuple[dict, object]] = {}

    def validate(self, instance, schema) -> None:
        import jsonschema

        entry = self._validators.get(id(schema))
        if entry is None or entry[0] is not schema:
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
            entry = self._validators[id(schema)] = (schema, cls(schema))
        error = jsonschema.exceptions.best_match(entry[1].iter_errors(instance))
        if error is not None:
            raise error

    def __getattr__(self, name):  # anything else nbgrader might reach for: the real module
        import jsonschema

        return getattr(jsonschema, name)


def install() -> None:
    """Patch nbgrader in this process (idempotent, thread-safe)."""
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return
        import nbgrader.api as api
        import nbgrader.nbgraderformat.common as metadata_format
        from nbgrader.dbutil import _temp_alembic_ini

        engines: dict[tuple, object] = {}
        create_engine = api.create_engine

        @wraps(create_engine)
        def shared_engine(url, **kwargs):
            key = (str(url), tuple(sorted(kwargs.items())))
            with _LOCK:
                engine = engines.get(key)
                if engine is None:
                    engine = engines[key] = create_engine(url, **kwargs)
            return engine

        create_all = api.Base.metadata.create_all

        @wraps(create_all)
        def create_missing_tables(bind=None, tables=None, checkfirst=True):
            # create_all checks every table one by one; one look at the table names says whether
            # any is missing (then create_all runs as it would have, creating only those).
            if bind is not None and tables is None and checkfirst:
                from sqlalchemy import inspect

                if set(api.Base.metadata.tables) <= set(inspect(bind).get_table_names()):
                    return
            create_all(bind=bind, tables=tables, checkfirst=checkfirst)

        @functools.lru_cache(maxsize=1)
        def alembic_head() -> str:
            # nbgrader runs `alembic heads` in a subprocess (1.4 s: a Python start-up and
            # alembic's imports) each time it creates a gradebook; the answer is a constant of
            # the installed nbgrader. The same alembic.ini, read with alembic's own API.
            from alembic.config import Config
            from alembic.script import ScriptDirectory

            with _temp_alembic_ini("sqlite:////tmp/gradebook.db") as alembic_ini:
                return ScriptDirectory.from_config(Config(alembic_ini)).get_current_head()

        api.create_engine = shared_engine
        alembic_head.nbgrader_original = api.get_alembic_version  # for the test that compares them
        api.get_alembic_version = alembic_head
        api.Base.metadata.create_all = create_missing_tables
        metadata_format.jsonschema = _CompiledSchemas()
        _INSTALLED = True
