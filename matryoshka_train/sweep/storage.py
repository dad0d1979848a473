"""The study's storage URL, checked before the sweep starts anything.

A sweep's study lives in an SQLAlchemy database URL: ``sqlite:///<output_dir>/study.db`` by default
(embedded, nothing to install), or a server every machine reaches, such as
``postgresql+psycopg://USER:PASSWORD@HOST:5432/DATABASE``. Optuna reports a bad URL deep inside its
storage, in SQLAlchemy's words; :func:`check_storage` finds the three mistakes people make and says
each in one line, before the output directory is made or a trial starts:

* a URL SQLAlchemy cannot read, or a database it does not know (``postgres://``, ``pg://``);
* a URL whose Python driver is not installed (the line names the package or extra to install);
* a server that cannot be reached or refuses the login (for a server URL only: the connection is
  tried once, with a short timeout).

Passwords never appear in the messages: the URL is shown with ``***`` in their place.
"""

from __future__ import annotations

from typing import Any

from ..errors import UserError

CONNECT_TIMEOUT_S = 10
POSTGRES_INSTALL = "pip install 'matryoshka-train[postgres]'"
# SQLAlchemy driver name -> what to install for it
DRIVER_INSTALL = {
    "psycopg": POSTGRES_INSTALL,
    "psycopg2": f"pip install psycopg2-binary (or write postgresql+psycopg:// and {POSTGRES_INSTALL})",
    "pymysql": "pip install pymysql",
    "mysqldb": "pip install mysqlclient",
    "mysqlconnector": "pip install mysql-connector-python",
}
EXAMPLES = "postgresql+psycopg://USER:PASSWORD@HOST:5432/DATABASE or sqlite:///PATH/study.db"


def check_storage(url: str) -> None:
    """Raise a one-line :class:`UserError` when ``url`` cannot hold the study; return when it can."""
    from sqlalchemy.engine import make_url  # optional extra (sweep): comes with optuna, checked first
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError  # optional extra (sweep), as above

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserError(f"'{url}' is not a database URL; use {EXAMPLES}", where="--storage") from None
    shown = parsed.render_as_string(hide_password=True)
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise UserError(f"unknown database '{parsed.drivername}' in {shown}; use {EXAMPLES}",
                        where="--storage") from None
    driver = dialect.driver
    try:
        dialect.import_dbapi()
    except ImportError:
        install = DRIVER_INSTALL.get(driver, f"install the Python package of driver '{driver}'")
        raise UserError(f"the {dialect.name} driver '{driver}' is not installed (needed by {shown}): {install}",
                        where="--storage") from None
    if dialect.name == "sqlite":
        return  # a file: Optuna creates it (and its folder is made by the sweep)
    _connect(parsed, dialect.name, shown)


def _connect(parsed: Any, database: str, shown: str) -> None:
    """Open one connection (short timeout) so an unreachable server is one line, not a long traceback."""
    import sqlalchemy  # optional extra (sweep): comes with optuna, checked first

    args = {"connect_timeout": CONNECT_TIMEOUT_S} if database in ("postgresql", "mysql", "mariadb") else {}
    engine = sqlalchemy.create_engine(parsed, connect_args=args, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect():
            pass
    except Exception as exc:  # noqa: BLE001 - the driver's own error classes differ: each is one line here
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        raise UserError(f"cannot reach the database {shown}: {reason[:300]}; check that the server runs and "
                        "accepts this user, password and database (create it first: createdb NAME)",
                        where="--storage") from None
    finally:
        engine.dispose()
