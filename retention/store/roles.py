"""The store's roles on PostgreSQL: an owner that migrates, an application role that cannot.

The audit trail refuses UPDATE, DELETE and TRUNCATE by triggers, but a table's owner
may disable its triggers: the role the API, the ETL and scoring connect as must
therefore not own ``audit_log``. ``retention db roles`` prints (or applies) idempotent
SQL for two roles:

- **the owner** (``store_owner_url``) owns the schema, every table, sequence and
  trigger function of the store, and runs the migrations (``retention migrate``);
- **the application role** (``store_url``) may only read and write rows: SELECT and
  INSERT on ``audit_log`` (no UPDATE, DELETE, TRUNCATE, TRIGGER or ownership);
  SELECT, INSERT and UPDATE on ``api_keys``, ``audit_denials`` and ``ehr_clients`` (keys
  and EHR clients are revoked, denial counts only grow; none is deleted); SELECT
  on ``alembic_version``; SELECT, INSERT, UPDATE and DELETE on every other table;
  the sequences. It owns the clinic copy (``clinic_*``) and may create tables in the
  schema, because the ETL rebuilds a large copy table beside the old one and swaps it
  in (``retention.db.bulk.swap_in``: DROP and RENAME are an owner's).

The owner is a member of the application role (a migration may alter the copy), never
the reverse. Default privileges give the application role the same rights on tables a
later migration creates; ``retention migrate`` hands new copy tables over and applies
these grants again. A new table that must be append-only goes in ``APPEND_ONLY``.

Objects the application role could create in the schema must never run with another
role's rights: every statement here runs with ``search_path`` set to ``pg_catalog``
(names are qualified), and ``upgrade_store`` (``retention migrate``) refuses to migrate a
schema holding functions, operators or types of another non-superuser role.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from retention.db.engines import store_engine
from retention.store import schema as store_schema
from retention.store import tables

# Rights of the application role on tables the owner owns, by table; any other: DATA.
APPEND_ONLY = ("audit_log",)
# Rows changed in place but never removed: keys and EHR clients are revoked, denial counts
# only grow.
NO_DELETE = ("api_keys", "audit_denials", "ehr_clients")
READ_ONLY = ("alembic_version",)
DATA = "SELECT, INSERT, UPDATE, DELETE"
PRIVILEGES = {
    **dict.fromkeys(APPEND_ONLY, "SELECT, INSERT"),
    **dict.fromkeys(NO_DELETE, "SELECT, INSERT, UPDATE"),
    **dict.fromkeys(READ_ONLY, "SELECT"),
}
# The ETL's copy of the clinic tables, rebuilt and swapped in by the application role.
COPY_LIKE = tables.COPY_PREFIX.replace("_", "\\_") + "%"
# Statements that must not resolve a name through the schema the application may write.
SAFE_PATH = "SET LOCAL search_path = pg_catalog, pg_temp"

log = logging.getLogger(__name__)

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class RolesError(ValueError):
    """Role names or a setup that cannot be made safe; the message says why."""


def check_name(name: str, what: str) -> str:
    """A role, database or schema name: lower-case letters, digits and underscores."""
    if not _NAME.fullmatch(name):
        raise RolesError(
            f"{what} {name!r} must be 1-63 lower-case letters, digits or "
            "underscores, starting with a letter or underscore"
        )
    return name


def _ident(name: str) -> str:
    return f'"{name}"'


def _literal(name: str) -> str:
    return f"'{name}'"


def setup_statements(owner: str, app: str, database: str, schema: str = "public") -> list[str]:
    """Everything, for a superuser: the roles, their rights on the database and schema,
    default privileges for later migrations, then ``grant_statements``. Idempotent."""
    for name, what in (
        (owner, "owner role"),
        (app, "application role"),
        (database, "database"),
        (schema, "schema"),
    ):
        check_name(name, what)
    if owner == app:
        raise RolesError("the owner and the application role must be different roles")
    o, a, s = _ident(owner), _ident(app), _ident(schema)
    return [
        SAFE_PATH,
        f"""DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {_literal(owner)}) THEN
        CREATE ROLE {o} LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {_literal(app)}) THEN
        CREATE ROLE {a} LOGIN;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {_literal(app)}
               AND (rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls
                    OR rolreplication)) THEN
        RAISE EXCEPTION 'role {app} is a superuser or may create roles or databases, bypass '
            'row security or replicate: choose an ordinary role as the application role';
    END IF;
    IF pg_catalog.pg_has_role({_literal(app)}, {_literal(owner)}, 'MEMBER') THEN
        RAISE EXCEPTION 'role {app} is a member of {owner} and could act as the owner: '
            'REVOKE {owner} FROM {app} first';
    END IF;
END
$roles$""",
        f"ALTER ROLE {o} LOGIN",
        f"ALTER ROLE {a} LOGIN",
        # The owner alters and hands over the application's copy tables in migrations.
        f"GRANT {a} TO {o}",
        f"GRANT CONNECT ON DATABASE {_ident(database)} TO {o}, {a}",
        f"GRANT TEMPORARY ON DATABASE {_ident(database)} TO {a}",
        f"ALTER SCHEMA {s} OWNER TO {o}",
        f"REVOKE CREATE ON SCHEMA {s} FROM PUBLIC",
        f"GRANT USAGE, CREATE ON SCHEMA {s} TO {a}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA {s} GRANT {DATA} ON TABLES TO {a}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA {s} "
        f"GRANT USAGE, SELECT ON SEQUENCES TO {a}",
        *grant_statements(owner, app, schema),
    ]


def grant_statements(
    owner: str, app: str, schema: str = "public", known: Sequence[str] | None = None
) -> list[str]:
    """Who owns what and the application role's rights on every table, as they should be.

    Runnable by a superuser or by the owner (``retention migrate`` runs it after the
    migrations). ``known``: the store's tables, whose trigger functions the owner must
    own (the migrations made them; a function the application owned could be replaced).
    """
    for name, what in ((owner, "owner role"), (app, "application role"), (schema, "schema")):
        check_name(name, what)
    known = sorted(known if known is not None else tables.metadata.tables)
    o, a = _ident(owner), _ident(app)
    listed = ", ".join(_literal(check_name(t, "table")) for t in known) or "NULL"
    policy = "\n".join(
        f"        WHEN {_literal(t)} THEN {_literal(rights)}" for t, rights in PRIVILEGES.items()
    )
    return [
        SAFE_PATH,
        f"""DO $owners$
DECLARE
    r record;
    target text;
BEGIN
    FOR r IN SELECT c.oid::regclass AS rel, c.relname, c.relkind,
                    pg_catalog.pg_get_userbyid(c.relowner) AS owned_by
             FROM pg_catalog.pg_class c
             WHERE c.relnamespace = {_literal(schema)}::regnamespace
               AND (c.relkind IN ('r', 'p', 'v', 'm', 'f')
                    OR (c.relkind = 'S' AND NOT EXISTS (
                        SELECT FROM pg_catalog.pg_depend d
                        WHERE d.classid = 'pg_catalog.pg_class'::regclass
                          AND d.objid = c.oid AND d.deptype IN ('a', 'i'))))
    LOOP
        target := CASE WHEN r.relkind IN ('r', 'p') AND r.relname LIKE {_literal(COPY_LIKE)}
                       THEN {_literal(app)} ELSE {_literal(owner)} END;
        IF r.owned_by <> target THEN
            EXECUTE 'ALTER ' || CASE r.relkind WHEN 'v' THEN 'VIEW'
                                               WHEN 'm' THEN 'MATERIALIZED VIEW'
                                               WHEN 'f' THEN 'FOREIGN TABLE'
                                               WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END
                || ' ' || r.rel::text || ' OWNER TO ' || pg_catalog.quote_ident(target);
        END IF;
    END LOOP;
    FOR r IN SELECT DISTINCT t.tgfoid::regprocedure AS fn
             FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
             JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
             WHERE NOT t.tgisinternal
               AND c.relnamespace = {_literal(schema)}::regnamespace
               AND c.relname IN ({listed})
               AND p.proowner <> {_literal(owner)}::regrole
    LOOP
        EXECUTE 'ALTER FUNCTION ' || r.fn::text || ' OWNER TO ' || {_literal(o)};
    END LOOP;
    FOR r IN SELECT c.oid::regclass AS rel, c.relname FROM pg_catalog.pg_class c
             WHERE c.relnamespace = {_literal(schema)}::regnamespace
               AND c.relkind IN ('r', 'p') AND c.relowner = {_literal(owner)}::regrole
    LOOP
        EXECUTE 'REVOKE ALL ON ' || r.rel::text || ' FROM ' || {_literal(a)};
        EXECUTE 'GRANT ' || CASE r.relname
{policy}
        ELSE {_literal(DATA)} END || ' ON ' || r.rel::text || ' TO ' || {_literal(a)};
    END LOOP;
END
$owners$""",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {_ident(schema)} TO {a}",
    ]


def script(statements: Sequence[str]) -> str:
    """Statements as one psql script, in one transaction."""
    return "BEGIN;\n" + "".join(f"{s};\n" for s in statements) + "COMMIT;\n"


def apply(connection: Connection, statements: Sequence[str]) -> None:
    """Run ``statements`` in the caller's transaction (PostgreSQL only)."""
    if connection.dialect.name != "postgresql":
        raise RolesError("database roles are for a PostgreSQL store; SQLite has none")
    # Through the driver's own cursor with no parameters: a LIKE pattern's "%" is SQL
    # here, not a placeholder.
    # The caller's search_path is given back afterwards (``SAFE_PATH`` is for these only).
    cursor = connection.connection.cursor()
    try:
        cursor.execute("SELECT pg_catalog.current_setting('search_path')")
        found = cursor.fetchone()
        path = found[0] if found else ""
        for statement in statements:
            cursor.execute(statement)
        cursor.execute("SELECT pg_catalog.set_config('search_path', %s, true)", (path,))
    finally:
        cursor.close()


def foreign_objects(connection: Connection, owner: str, schema: str = "public") -> list[str]:
    """Functions, procedures, operators and types in ``schema`` that neither ``owner`` nor a
    superuser owns (tables' own row and array types aside).

    The application role may create objects in the schema (the ETL's copy tables); a
    function of its own there could win the owner's name lookup during a migration
    (CVE-2018-1058) and run with the owner's rights.
    """
    rows = connection.execute(
        text(f"""
        SELECT kind, name, pg_catalog.pg_get_userbyid(owner_oid) AS owned_by
        FROM (
            SELECT 'function' AS kind, p.oid::regprocedure::text AS name, p.proowner AS owner_oid,
                   p.pronamespace AS ns
            FROM pg_catalog.pg_proc p
            UNION ALL
            SELECT 'operator', o.oid::regoperator::text, o.oprowner, o.oprnamespace
            FROM pg_catalog.pg_operator o
            UNION ALL
            SELECT 'type', t.oid::regtype::text, t.typowner, t.typnamespace
            FROM pg_catalog.pg_type t
            WHERE t.typrelid = 0 AND NOT (t.typcategory = 'A' AND EXISTS (
                SELECT FROM pg_catalog.pg_type e WHERE e.oid = t.typelem AND e.typrelid <> 0))
        ) objects
        WHERE ns = {_literal(schema)}::regnamespace
          AND owner_oid <> {_literal(owner)}::regrole
          AND NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE oid = owner_oid)
        ORDER BY kind, name""")
    ).all()
    return [f"{kind} {name} (owned by {owned_by})" for kind, name, owned_by in rows]


def upgrade_store(
    store_url: str, owner_url: str = "", schema: str = "public"
) -> tuple[str | None, str | None]:
    """Run the migrations as the owner (``owner_url``; else ``store_url``) and, on
    PostgreSQL with an owner, set the application role's rights again, in one transaction.

    Returns the revisions before and after. Refuses, before any migration runs, a
    schema holding functions, operators or types another role made (``foreign_objects``).
    """
    names: tuple[str, str] | None = None
    if owner_url and make_url(owner_url).get_backend_name() == "postgresql":
        names = _role_names(store_url, owner_url)
    engine = store_engine(owner_url or store_url)
    try:
        with engine.begin() as conn:
            if not owner_url and conn.dialect.name == "postgresql":
                log.warning(
                    "migrating as store_url's role, which then owns the store and "
                    "could erase its audit trail: set up separate roles with "
                    "`retention db roles` and set store_owner_url"
                )
            if names is not None:
                found = foreign_objects(conn, names[0], schema)
                if found:
                    raise RolesError(
                        f"schema {schema} holds objects the owner {names[0]} did not make, "
                        "which a migration could run with the owner's rights: "
                        + "; ".join(found)
                        + ". Drop them (their owner or a superuser) first"
                    )
            before = store_schema.current_revision(conn)
            store_schema.upgrade(conn)
            after = store_schema.current_revision(conn)
            if names is not None:
                apply(conn, grant_statements(*names, schema))
            return before, after
    finally:
        engine.dispose()


def _role_names(store_url: str, owner_url: str) -> tuple[str, str]:
    """The owner's and the application role's names, from ``store_owner_url`` and
    ``store_url``."""
    owner, app = make_url(owner_url).username, make_url(store_url).username
    if not owner or not app:
        raise RolesError(
            "store_url and store_owner_url must both name their user "
            "(postgresql://USER@host/db) for the application role's rights to be "
            "set after migrating"
        )
    if owner == app:
        raise RolesError(
            f"store_owner_url and store_url both connect as {owner}: the "
            "application role must not own the store (`retention db roles`)"
        )
    return check_name(owner, "owner role"), check_name(app, "application role")
