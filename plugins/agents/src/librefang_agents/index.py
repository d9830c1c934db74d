"""An in-memory index of the registry's list columns: listing, filtering and counting without SQL.

The database stays the source of truth; this is a cache of the columns a list shows, loaded at
start and updated by every write of this process. When several daemons share one database (a
``database_url``), each write bumps a version row and every list first compares it, reloading the
index when another process has written. Memory: about 1 KiB per agent (see docs/benchmarks.md).
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Entry:
    """The list view of one agent."""

    id: str
    name: str
    description: str
    author: str
    state: str
    mode: str
    profile: str | None
    schedule: str
    model_provider: str
    model_name: str
    tags: list[str]
    identity: dict[str, Any]
    parent_id: str | None
    session_id: str
    created_at: float
    last_active: float
    search: str
    created_iso: str = ""
    active_iso: str = ""
    # The entry's list item as JSON, with the default model it was rendered for; dropped on change.
    fragment: bytes | None = None
    fragment_key: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        self.created_iso = iso(self.created_at)
        self.active_iso = iso(self.last_active)

    @classmethod
    def from_row(cls, row: Any) -> Entry:
        return cls(
            id=row.id, name=row.name, description=row.description or "", author=row.author or "", state=row.state,
            mode=row.mode, profile=row.profile, schedule=row.schedule, model_provider=row.model_provider,
            model_name=row.model_name, tags=json.loads(row.tags) if row.tags else [],
            identity=json.loads(row.identity) if row.identity else {}, parent_id=row.parent_id,
            session_id=row.session_id, created_at=row.created_at, last_active=row.last_active,
            search=search_text(row.name, row.description or ""),
        )


def iso(ts: float) -> str:
    """An epoch timestamp as ISO 8601 UTC with milliseconds (``2026-11-29T05:06:51.071Z``)."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def search_text(name: str, description: str) -> str:
    """What ``q`` is matched against: name and description, lower-cased."""
    return f"{name}\n{description}".lower()


# Remembered substring-query results per sorted view (see AgentIndex._matches): at most this many
# needles, holding at most this many entry references in all (8 bytes each: 400 KB per view).
MATCH_CACHE_QUERIES = 64
MATCH_CACHE_ENTRIES = 50_000
# Above one hit per this many agents, a substring query tests each entry instead of hopping
# between hits with str.find (measured at 10,000 agents: 0.6 vs 10 ms when every agent matches).
SPARSE_HITS = 32

_DATA_FIELDS = tuple(f for f in Entry.__slots__ if f not in ("created_iso", "active_iso", "fragment", "fragment_key"))

SORT_KEYS = {
    "name": lambda e: e.name,
    "created_at": lambda e: (e.created_at, e.id),
    "last_active": lambda e: (e.last_active, e.id),
    "state": lambda e: (e.state, e.name),
}
# Which sorted views a changed field invalidates.
_FIELD_VIEWS = {"name": ("name", "state"), "state": ("state",), "last_active": ("last_active",),
                "created_at": ("created_at",)}


class AgentIndex:
    """Entries by id, lazily sorted views, and the parent → children map."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.by_name: dict[str, str] = {}  # lower-cased name -> id (names are unique regardless of case)
        self.children: dict[str, list[str]] = {}
        self._views: dict[str, list[Entry]] = {}
        # Per sorted view: every entry's search text joined by NUL, and where each one starts, so a
        # substring query is a few str.find calls in C instead of a Python loop over every agent.
        self._corpus: dict[str, tuple[str, list[int], dict[str, list[Entry]]]] = {}
        self.state_counts: dict[str, int] = {}

    def load(self, rows: list[Any]) -> None:
        """Replace the whole index with these rows."""
        self.entries.clear()
        self.by_name.clear()
        self.children.clear()
        self._views.clear()
        self._corpus.clear()
        self.state_counts.clear()
        for row in sorted(rows, key=lambda r: r.created_at):
            self.put(Entry.from_row(row))

    def put(self, entry: Entry) -> None:
        """Add an agent, or copy a changed entry's fields into the one already indexed."""
        old = self.entries.get(entry.id)
        if old is not None:
            changed = {f: getattr(entry, f) for f in _DATA_FIELDS if getattr(old, f) != getattr(entry, f)}
            self.update(entry.id, **changed)
            return
        self.entries[entry.id] = entry
        self.by_name[entry.name.lower()] = entry.id
        if entry.parent_id:
            self.children.setdefault(entry.parent_id, []).append(entry.id)
            self._stale(entry.parent_id)
        self._count(entry.state, 1)
        self._corpus.clear()
        for sort, view in self._views.items():
            bisect.insort(view, entry, key=SORT_KEYS[sort])

    def update(self, agent_id: str, **values: Any) -> None:
        """Change fields of one entry in place (state, mode, last_active, session_id, parent_id)."""
        entry = self.entries.get(agent_id)
        if entry is None:
            return
        if "name" in values and values["name"] != entry.name:
            if self.by_name.get(entry.name.lower()) == agent_id:
                del self.by_name[entry.name.lower()]
            self.by_name[values["name"].lower()] = agent_id
        if "state" in values and values["state"] != entry.state:
            self._count(entry.state, -1)
            self._count(values["state"], 1)
        if "parent_id" in values and values["parent_id"] != entry.parent_id:
            self._unlink_parent(entry)
            if values["parent_id"]:
                self.children.setdefault(values["parent_id"], []).append(agent_id)
                self._stale(values["parent_id"])
        if values:
            entry.fragment = None
        if "last_active" in values:
            entry.active_iso = iso(values["last_active"])
        if "created_at" in values:
            entry.created_iso = iso(values["created_at"])
        for key, value in values.items():
            setattr(entry, key, value)
            for view in _FIELD_VIEWS.get(key, ()):
                self._views.pop(view, None)
                self._corpus.pop(view, None)
            if key in ("name", "description"):
                entry.search = search_text(entry.name, entry.description)
                self._corpus.clear()

    def remove(self, agent_id: str) -> None:
        entry = self.entries.pop(agent_id, None)
        if entry is None:
            return
        if self.by_name.get(entry.name.lower()) == entry.id:
            del self.by_name[entry.name.lower()]
        self._unlink_parent(entry)
        self._count(entry.state, -1)
        self._corpus.clear()
        for sort in list(self._views):
            view, key = self._views[sort], SORT_KEYS[sort]
            i = bisect.bisect_left(view, key(entry), key=key)
            if i < len(view) and view[i] is entry:
                del view[i]
            else:  # cannot happen while keys are unique; rebuild rather than keep a wrong view
                del self._views[sort]

    def _count(self, state: str, delta: int) -> None:
        count = self.state_counts.get(state, 0) + delta
        if count:
            self.state_counts[state] = count
        else:
            self.state_counts.pop(state, None)

    def _stale(self, agent_id: str) -> None:
        parent = self.entries.get(agent_id)
        if parent is not None:
            parent.fragment = None  # its item lists its children

    def _unlink_parent(self, entry: Entry) -> None:
        if entry.parent_id:
            self._stale(entry.parent_id)
        siblings = self.children.get(entry.parent_id or "")
        if siblings and entry.id in siblings:
            siblings.remove(entry.id)
            if not siblings:
                del self.children[entry.parent_id or ""]

    def _view(self, sort: str) -> list[Entry]:
        view = self._views.get(sort)
        if view is None:
            view = self._views[sort] = sorted(self.entries.values(), key=SORT_KEYS[sort])
        return view

    def _matches(self, sort: str, needle: str) -> list[Entry]:
        """Entries of a view whose search text contains ``needle``, in view order.

        Results are remembered per view until the view's corpus changes (any change of a name,
        description or the set of agents drops it), so a polled filter costs a dict lookup instead
        of a scan of every agent's text. Bounded per view: ``MATCH_CACHE_QUERIES`` needles holding
        ``MATCH_CACHE_ENTRIES`` entry references in all, oldest dropped first.
        """
        view = self._view(sort)
        corpus = self._corpus.get(sort)
        if corpus is None:
            starts, offset = [], 0
            for entry in view:
                starts.append(offset)
                offset += len(entry.search) + 1
            corpus = self._corpus[sort] = ("\x00".join(e.search for e in view), starts, {})
        text, starts, remembered = corpus
        found = remembered.get(needle)
        if found is not None:
            return found
        if text.count(needle) * SPARSE_HITS > len(view):
            # Many hits: a per-entry test is cheaper than a find and a bisect per hit.
            found = [e for e in view if needle in e.search]
        else:
            found = []
            pos = text.find(needle)
            while pos != -1:
                i = bisect.bisect_right(starts, pos) - 1
                found.append(view[i])
                if i + 1 >= len(starts):
                    break
                pos = text.find(needle, starts[i + 1])  # one hit per entry is enough
        if len(found) <= MATCH_CACHE_ENTRIES:
            remembered[needle] = found
            held = sum(len(v) for v in remembered.values())
            while len(remembered) > MATCH_CACHE_QUERIES or held > MATCH_CACHE_ENTRIES:
                oldest = next(iter(remembered))  # never the one just added: it alone fits
                held -= len(remembered.pop(oldest))
        return found

    def page(
        self, *, q: str | None, state: str | None, sort: str, descending: bool, limit: int, offset: int
    ) -> tuple[list[Entry], int]:
        """One page of entries in order, and how many match the filters."""
        if q:
            needle = q.lower()
            matches = [] if "\x00" in needle else self._matches(sort, needle)
            # The remembered result is never changed (filter and reverse work on copies); states are
            # read now, not when it was remembered.
            if state:
                matches = [e for e in matches if e.state == state]
            if descending:
                matches = matches[::-1]
            return matches[offset:offset + limit], len(matches)
        view = self._view(sort)
        if state:
            # Walk only as far as the page reaches; the total comes from the per-state counters.
            page: list[Entry] = []
            skipped = 0
            for entry in reversed(view) if descending else view:
                if entry.state != state:
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                if len(page) >= limit:
                    break
                page.append(entry)
            return page, self.state_counts.get(state, 0)
        total = len(view)
        if descending:
            end = max(total - offset, 0)
            return view[max(end - limit, 0):end][::-1], total
        return view[offset:offset + limit], total

    def counts(self) -> tuple[int, int]:
        """(all agents, running agents)."""
        return len(self.entries), self.state_counts.get("Running", 0)
