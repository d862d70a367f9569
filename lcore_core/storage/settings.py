"""Storage settings: one shape for every `sqlite` / `postgres` section (the user DB's
`database`, a cache's, the quota's, A2A's), built once and handed to `lcore_core.storage`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lcore_core.errors import ConfigError

DEFAULT_SQLITE_PATH = "/tmp/lightspeed-stack.db"
CONNECT_TIMEOUT_S = 10
STATEMENT_TIMEOUT_S = 30
APPLICATION_NAME = "lcore"
# TCP keepalives (libpq's, client side): a session whose peer vanished without closing (a
# network cut, a crashed host) is found out in about a minute instead of the kernel's hours.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
              "keepalives_count": 3}
# What a section sets for its place that the place's first section decides when several share
# it (`Storage.database`).
PER_PLACE = ("max_connections", "prepared_statements", "statement_timeout")


@dataclass(frozen=True)
class StorageSettings:
    """Where a store lives. `kind` is "sqlite" (`path`) or "postgres" (the rest)."""

    kind: str
    path: Path | None = None
    host: str = "localhost"
    port: int = 5432
    db: str = ""
    user: str = ""
    password: str = field(default="", repr=False)
    namespace: str = "public"
    ssl_mode: str = "prefer"
    gss_encmode: str = "prefer"
    ca_cert_path: str | None = None
    connect_timeout: int = CONNECT_TIMEOUT_S
    application_name: str = APPLICATION_NAME
    max_connections: int = 10
    prepared_statements: bool = True
    statement_timeout: int = STATEMENT_TIMEOUT_S
    # Open for reading only: SQLite `mode=ro` (the file is neither created nor changed),
    # PostgreSQL sessions with `default_transaction_read_only` (`lcore migrate` reads upstream).
    read_only: bool = False

    @classmethod
    def from_section(cls, section: Any, *, where: str = "database",
                     default_path: str | None = DEFAULT_SQLITE_PATH) -> StorageSettings:
        """The settings of a section holding `sqlite` or `postgres` (None or neither:
        SQLite at `default_path`). `~` in a path is the user's home; a password file that
        cannot be read is a `ConfigError` naming `where`."""
        pg = section.get("postgres") if section else None
        if pg:
            password = pg.get("password") or ""
            if pg.get("password_path"):
                path = Path(pg["password_path"]).expanduser()
                try:
                    password = path.read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise ConfigError(f"{where}.postgres.password_path: cannot read {path}: "
                                      f"{exc.strerror or exc}") from exc
            ca = pg.get("ca_cert_path")
            return cls(kind="postgres", host=pg.get("host", "localhost"),
                       port=int(pg.get("port", 5432)), db=pg["db"], user=pg["user"],
                       password=password, namespace=pg.get("namespace") or "public",
                       ssl_mode=pg.get("ssl_mode", "prefer"),
                       gss_encmode=pg.get("gss_encmode", "prefer"),
                       ca_cert_path=str(Path(ca).expanduser()) if ca else None,
                       connect_timeout=int(pg.get("connect_timeout") or CONNECT_TIMEOUT_S),
                       application_name=pg.get("application_name") or APPLICATION_NAME,
                       max_connections=int(pg.get("max_connections", 10)),
                       prepared_statements=bool(pg.get("prepared_statements", True)),
                       statement_timeout=int(pg.get("statement_timeout", STATEMENT_TIMEOUT_S)))
        sqlite = section.get("sqlite") if section else None
        raw = sqlite["db_path"] if sqlite else default_path
        if raw is None:
            raise ConfigError(f"{where}: configure sqlite or postgres")
        return cls(kind="sqlite", path=Path(raw).expanduser())

    def conninfo(self) -> dict[str, Any]:
        """libpq's connection keywords (PostgreSQL)."""
        params: dict[str, Any] = {
            "host": self.host, "port": self.port, "dbname": self.db, "user": self.user,
            "password": self.password or None, "sslmode": self.ssl_mode,
            "gssencmode": self.gss_encmode, "sslrootcert": self.ca_cert_path,
            "connect_timeout": self.connect_timeout, "application_name": self.application_name,
            **KEEPALIVES}
        options = []
        if self.namespace != "public":
            options.append(f"-c search_path={self.namespace},public")
        if self.read_only:
            options.append("-c default_transaction_read_only=on")
        if options:
            params["options"] = " ".join(options)
        return {key: value for key, value in params.items() if value is not None}

    def key(self) -> tuple[Any, ...]:
        """Two sections with the same key share one Database (and one connection budget)."""
        if self.kind == "sqlite":
            return ("sqlite", str(self.path), self.read_only)
        return ("postgres", tuple(sorted(self.conninfo().items())))
