"""What an importer gets: both configurations, upstream's databases, and the report it fills."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lcore_core.migrate import source
from lcore_core.migrate.source import UpstreamDatabase

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from lcore_core.config import Config
    from lcore_core.migrate.cache import UpstreamConversation

# Upstream's tables, by the section of its configuration that says where they are.
UPSTREAM_TABLES: dict[str, tuple[str, ...]] = {
    "database": ("user_conversation", "user_turn", "saved_prompt"),
    "conversation_cache": ("cache", "conversations", "conversation_summaries"),
    "quota_handlers": ("quota_limits", "token_usage"),
    "a2a_state": ("a2a_contexts", "a2a_tasks"),
}
WHAT = {"database": "upstream's user DB", "conversation_cache": "upstream's conversation cache",
        "quota_handlers": "upstream's quota database", "a2a_state": "upstream's A2A state"}


@dataclass
class TableReport:
    """The fate of one upstream table's rows: imported, or skipped for a stated reason."""

    section: str
    table: str
    target: str = ""
    found: int = 0
    imported: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def skip(self, reason: str, rows: int = 1) -> None:
        if rows:
            self.skipped[reason] += rows

    def note(self, text: str) -> None:
        """Say what was not carried over (a value with no LCore counterpart), or how."""
        if text not in self.notes:
            self.notes.append(text)


class Migration:
    """One run of `lcore migrate --from-upstream`.

    `source` is upstream's configuration, `target` LCore's; `dry_run` means count, write
    nothing. `owners` maps each conversation of upstream's user DB (by its LCore id) to its user.
    The conversions of upstream's values are here for the importers: `utc(value)` (a moment
    as naive UTC), `json_list(value)`, `json_value(value)`, `conversation_id(upstream_id)`.
    """

    utc = staticmethod(source.utc)
    json_list = staticmethod(source.json_list)
    json_value = staticmethod(source.json_value)
    conversation_id = staticmethod(source.llama_conversation_id)

    def __init__(self, source: Config, target: Config, *, dry_run: bool = False) -> None:
        self.source = source
        self.target = target
        self.dry_run = dry_run
        self.tables: list[TableReport] = []
        self.owners: dict[str, str] = {}
        self._open: dict[str, UpstreamDatabase | None] = {}

    def table(self, section: str, table: str, target: str = "") -> TableReport:
        """The report of upstream's `table` (created on first use)."""
        for report in self.tables:
            if (report.section, report.table) == (section, table):
                return report
        report = TableReport(section, table, target)
        self.tables.append(report)
        return report

    def upstream(self, section: str) -> UpstreamDatabase | None:
        """Upstream's database for `section`, opened read-only; None when upstream keeps that
        data in memory (nothing to import). Raises `MigrationError` for a missing SQLite file or
        an unreadable password file; one that cannot be reached fails at its first read."""
        if section not in self._open:
            self._open[section] = self._connect(section)
        return self._open[section]

    def _connect(self, section: str) -> UpstreamDatabase | None:
        what = WHAT.get(section, f"upstream's {section}")
        if section == "database":
            # Upstream's default when no backend is given: SQLite in /tmp (LCore's schema says
            # the same; the loaded section may then hold neither backend).
            settings = dict(self.source.get("database") or {})
            if not settings.get("postgres") and not settings.get("sqlite"):
                settings["sqlite"] = {"db_path": "/tmp/lightspeed-stack.db"}
            return UpstreamDatabase.open(settings, what=what, section=section)
        if section == "conversation_cache":
            cache = self.source.get("conversation_cache") or {}
            if cache.get("type") not in ("sqlite", "postgres"):
                return None
            return UpstreamDatabase.open({cache["type"]: cache.get("settings")}, what=what,
                                         section=section)
        section_settings = self.source.get(section)
        if not section_settings or not (section_settings.get("sqlite")
                                        or section_settings.get("postgres")):
            return None
        # Upstream's A2A store connects without a search_path: its tables may be in `public`.
        return UpstreamDatabase.open(section_settings, what=what, section=section,
                                     fallback_public=section == "a2a_state")

    async def close(self) -> None:
        for database in self._open.values():
            if database is not None:
                await database.close()
        self._open.clear()

    def cache_conversations(self, target: str) -> AsyncIterator[UpstreamConversation]:
        """Upstream's cached conversations, one at a time (see `lcore_core.migrate.cache`);
        `target` names LCore's tables in the report."""
        from lcore_core.migrate.cache import upstream_conversations

        return upstream_conversations(self, target)

    async def import_cache(self, cache: Any) -> None:
        """Upstream's conversation cache into `cache` (a cache plugin's own class with `setup`,
        `holds`, `import_conversation` and `close`); a conversation LCore's cache already has
        is left as it is. Closes `cache`."""
        target = "lcore_cache_entry"
        exists = "conversation already in LCore's cache (left as it is)"
        entries = self.table("conversation_cache", "cache", target)
        listed = self.table("conversation_cache", "conversations", "lcore_cache_conversation")
        try:
            if not self.dry_run:
                await cache.setup()
            async for c in self.cache_conversations(target):
                if self.dry_run:
                    added = not await cache.holds(c.user_id, c.conversation_id)
                else:
                    added = await cache.import_conversation(
                        c.user_id, c.conversation_id, c.entries, c.topic_summary,
                        c.last_message_timestamp)
                if added:
                    entries.imported += len(c.entries)
                    listed.imported += int(c.listed)
                else:
                    entries.skip(exists, len(c.entries))
                    listed.skip(exists, int(c.listed))
        finally:
            await cache.close()

    def owner(self, conversation_id: str) -> str | None:
        """The user of a conversation (LCore id) in upstream's user DB, if it is there."""
        return self.owners.get(conversation_id)

    def totals(self) -> tuple[int, int]:
        return (sum(t.imported for t in self.tables),
                sum(sum(t.skipped.values()) for t in self.tables))

