"""The agent manifest: a TOML document validated by pydantic, every field defaulted.

Unknown keys are kept (``extra="allow"`` on every table) so a manifest written for a newer
version, or carrying keys of other plugins, survives a round trip through the registry. A bad
manifest raises :class:`ManifestError`, whose message names the key and its line in the TOML text.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# tomlkit is imported when a manifest is written (dump_toml); a missing one still fails this import.
if importlib.util.find_spec("tomlkit") is None:  # pragma: no cover - tomlkit is a declared dependency
    raise ImportError("librefang-agents needs the 'tomlkit' package (pip install tomlkit)")

NAME_PATTERN = re.compile(r"^[\w][\w .\-]{0,63}$")
TOOL_PATTERN = re.compile(r"^[A-Za-z0-9_*?.:\-]{1,128}$")
MAX_LIST = 500
MAX_TEXT = 64 * 1024  # system prompts and descriptions; the whole manifest is capped separately

ProfileName = Literal["minimal", "coding", "research", "messaging", "automation", "full", "custom"]


class ManifestError(ValueError):
    """A manifest that cannot be used; ``key`` and ``line`` point at the problem when known."""

    def __init__(self, message: str, *, key: str = "", line: int | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.line = line


class Table(BaseModel):
    """Base of every manifest table: unknown keys are kept, assignments re-validated."""

    # defer_build: validators are built when the first manifest is read, not at daemon start.
    model_config = ConfigDict(extra="allow", validate_assignment=True, populate_by_name=True, defer_build=True)


def check_agent_name(name: str) -> str:
    """Agent names double as workspace folder names: letters, digits, ``_ . -`` and inner spaces."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name != name.strip() or ".." in name:
        raise ValueError(
            "must be 1-64 characters: letters, digits, '_', '-', '.', inner spaces; no leading '.', no '..'"
        )
    return name


def _check_patterns(values: list[str]) -> list[str]:
    if len(values) > MAX_LIST:
        raise ValueError(f"at most {MAX_LIST} entries")
    for value in values:
        if not TOOL_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid name or glob pattern")
    return values


BASE_URL = re.compile(r"^https?://[^\s/?#]+[^\s]*$", re.IGNORECASE)


def _check_base_url(value: str | None) -> str | None:
    # An unusable URL must be refused when it is set (400), not found by the first message (502);
    # found by the reliability fuzzing harness: a control character in base_url.
    if value is not None and (not BASE_URL.match(value) or not value.isprintable()):
        raise ValueError("base_url must be an http:// or https:// URL without spaces or control characters")
    return value


class ModelConfig(Table):
    """``[model]``: provider and model (``default`` resolves to ``[default_model]``), sampling, prompt.

    Extra keys are kept and passed through to the provider request by the agent runtime.
    """

    provider: str = Field("default", min_length=1, max_length=100)
    model: str = Field("default", min_length=1, max_length=200)
    max_tokens: int = Field(4096, ge=1, le=1_000_000)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    system_prompt: str = Field("You are a helpful AI agent.", max_length=MAX_TEXT)
    api_key_env: str | None = Field(None, max_length=200)
    base_url: str | None = Field(None, max_length=2000)
    context_window: int | None = Field(None, ge=1, le=100_000_000)
    max_output_tokens: int | None = Field(None, ge=1, le=10_000_000)

    _base_url = field_validator("base_url")(_check_base_url)

    @model_validator(mode="before")
    @classmethod
    def _name_alias(cls, data: Any) -> Any:
        # ``name`` is accepted as an alias of ``model`` (as the reference manifests do).
        if isinstance(data, dict) and "name" in data and "model" not in data:
            data = dict(data)
            data["model"] = data.pop("name")
        return data


class FallbackModel(Table):
    """One ``[[fallback_models]]`` entry, tried in order when the primary model fails."""

    provider: str = Field(..., min_length=1, max_length=100)
    model: str = Field(..., min_length=1, max_length=200)
    api_key_env: str | None = Field(None, max_length=200)
    base_url: str | None = Field(None, max_length=2000)

    _base_url = field_validator("base_url")(_check_base_url)


class ResourceQuota(Table):
    """``[resources]``: per-agent quotas; 0 means unlimited for token and cost limits."""

    max_llm_tokens_per_hour: int = Field(0, ge=0)
    max_tool_calls_per_minute: int = Field(60, ge=0)
    max_memory_bytes: int = Field(256 * 1024 * 1024, ge=0)
    max_cpu_time_ms: int = Field(30_000, ge=0)
    max_network_bytes_per_hour: int = Field(100 * 1024 * 1024, ge=0)
    max_cost_per_hour_usd: float = Field(0.0, ge=0)
    max_cost_per_day_usd: float = Field(0.0, ge=0)
    max_cost_per_month_usd: float = Field(0.0, ge=0)


class ManifestCapabilities(Table):
    """``[capabilities]``: what the agent is granted. ``tools = []`` or ``["*"]`` means every tool."""

    tools: list[str] = Field(default_factory=list)
    network: list[str] = Field(default_factory=list)
    memory_read: list[str] = Field(default_factory=list)
    memory_write: list[str] = Field(default_factory=list)
    agent_spawn: bool = False
    agent_message: list[str] = Field(default_factory=list)
    shell: list[str] = Field(default_factory=list)
    ofp_discover: bool = False
    ofp_connect: list[str] = Field(default_factory=list)

    @field_validator("network", "memory_read", "memory_write", "agent_message", "shell", "ofp_connect")
    @classmethod
    def _bounded(cls, values: list[str]) -> list[str]:
        if len(values) > MAX_LIST:
            raise ValueError(f"at most {MAX_LIST} entries")
        for value in values:
            if not value or len(value) > 500:
                raise ValueError("entries must be 1-500 characters")
        return values

    @field_validator("tools")
    @classmethod
    def _tools(cls, values: list[str]) -> list[str]:
        return _check_patterns(values)


class AutonomousConfig(Table):
    """``[autonomous]``: guardrails for agents that run on their own."""

    quiet_hours: str | None = None
    max_iterations: int = Field(50, ge=1, le=10_000)
    max_restarts: int = Field(10, ge=0, le=10_000)
    heartbeat_interval_secs: int = Field(30, ge=1)
    heartbeat_timeout_secs: int | None = Field(None, ge=1)
    heartbeat_keep_recent: int | None = Field(None, ge=0)
    heartbeat_channel: str | None = None


class ModelRouting(Table):
    """``[routing]``: pick a cheaper or stronger model by the size of the request."""

    simple_model: str = ""
    medium_model: str = ""
    complex_model: str = ""
    simple_threshold: int = Field(100, ge=0)
    complex_threshold: int = Field(500, ge=0)


class Trigger(Table):
    """One ``[[triggers]]`` entry: an event pattern that wakes the agent."""

    pattern: str = Field(..., min_length=1, max_length=500)
    prompt_template: str = Field("", max_length=MAX_TEXT)
    max_fires: int = Field(0, ge=0)
    cooldown_secs: int = Field(0, ge=0)
    target_agent: str | None = None
    workflow_id: str | None = None


class WorkspaceMount(Table):
    """An entry of ``[workspaces]``: a folder (relative to the home's workspaces) shared with the agent."""

    path: str = Field(..., min_length=1, max_length=500)
    mode: Literal["ro", "rw"] = "rw"

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        if value.startswith(("/", "\\")) or ".." in value.replace("\\", "/").split("/") or "\x00" in value:
            raise ValueError("must be a relative path without '..'")
        return value


class AgentIdentity(Table):
    """Visual identity shown by dashboards. Empty strings are kept (they mean "cleared")."""

    emoji: str | None = Field(None, max_length=32)
    avatar_url: str | None = Field(None, max_length=256 * 1024)
    color: str | None = None
    archetype: str | None = Field(None, max_length=64)
    vibe: str | None = Field(None, max_length=64)
    greeting_style: str | None = Field(None, max_length=64)

    @field_validator("avatar_url")
    @classmethod
    def _avatar(cls, value: str | None) -> str | None:
        if value and not (
            re.fullmatch(r"https?://[^\s\x00]{1,2040}", value)
            or re.fullmatch(r"data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=]+", value)
        ):
            raise ValueError("must be an http(s) URL or a data:image/(png|jpeg|gif|webp);base64 URI")
        return value

    @field_validator("color")
    @classmethod
    def _color(cls, value: str | None) -> str | None:
        if value and not re.fullmatch(r"#[0-9A-Fa-f]{3}(?:[0-9A-Fa-f]{3})?", value):
            raise ValueError("must be a hex colour such as #FF5C00")
        return value


class PeriodicSchedule(Table):
    cron: str = Field(..., min_length=1, max_length=200)


class ProactiveSchedule(Table):
    conditions: list[str] = Field(default_factory=list, max_length=100)


class ContinuousSchedule(Table):
    check_interval_secs: int = Field(300, ge=1)


class Schedule(BaseModel):
    """``schedule``: ``"reactive"`` or one of ``{periodic={cron=..}}``, ``{proactive={conditions=[..]}}``,
    ``{continuous={check_interval_secs=300}}``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    periodic: PeriodicSchedule | None = None
    proactive: ProactiveSchedule | None = None
    continuous: ContinuousSchedule | None = None

    @model_validator(mode="after")
    def _one(self) -> Schedule:
        if sum(v is not None for v in (self.periodic, self.proactive, self.continuous)) != 1:
            raise ValueError("exactly one of periodic, proactive, continuous")
        return self

    def kind(self) -> str:
        return next(k for k in ("periodic", "proactive", "continuous") if getattr(self, k) is not None)


class AgentManifest(Table):
    """The whole manifest. Every field has a default; unknown keys are kept."""

    name: str = "unnamed"
    version: str = Field("0.1.0", max_length=50)
    description: str = Field("", max_length=MAX_TEXT)
    author: str = Field("", max_length=200)
    module: str = "builtin:chat"
    tags: list[str] = Field(default_factory=list)
    schedule: Literal["reactive"] | Schedule = "reactive"
    session_mode: Literal["persistent", "new"] = "persistent"
    profile: ProfileName | None = None
    priority: Literal["Low", "Normal", "High", "Critical"] = "Normal"
    skills: list[str] = Field(default_factory=list)
    skills_disabled: bool = False
    mcp_servers: list[str] = Field(default_factory=list)
    mcp_disabled: bool = False
    tool_allowlist: list[str] = Field(default_factory=list)
    tool_blocklist: list[str] = Field(default_factory=list)
    tools_disabled: bool = False
    exec_policy: str | dict[str, Any] | None = None
    max_history_messages: int = 60
    max_concurrent_invocations: int = Field(1, ge=1, le=64)
    enabled: bool = True
    auto_dream_enabled: bool = False
    auto_evolve: bool = False
    web_search_augmentation: Literal["off", "auto", "always"] = "off"
    pinned_model: str | None = Field(None, max_length=200)
    workspace: str | None = Field(None, max_length=500)
    generate_identity_files: bool = True
    allowed_plugins: list[str] = Field(default_factory=list)
    inherit_parent_context: bool = True
    is_hand: bool = False
    response_format: str | dict[str, Any] | None = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    fallback_models: list[FallbackModel] = Field(default_factory=list, max_length=20)
    resources: ResourceQuota = Field(default_factory=ResourceQuota)
    capabilities: ManifestCapabilities = Field(default_factory=ManifestCapabilities)
    identity: AgentIdentity | None = None
    autonomous: AutonomousConfig | None = None
    routing: ModelRouting | None = None
    tools: dict[str, dict[str, Any]] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    triggers: list[Trigger] = Field(default_factory=list, max_length=100)
    workspaces: dict[str, WorkspaceMount] = Field(default_factory=dict)
    context_injection: list[dict[str, Any]] = Field(default_factory=list, max_length=100)
    thinking: dict[str, Any] | None = None
    compaction: dict[str, Any] | None = None
    proactive_memory: dict[str, Any] | None = None
    context_engine: dict[str, Any] | None = None
    skill_workshop: dict[str, Any] | None = None
    channel_overrides: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_agent_name(value)

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "reactive":
            raise ValueError("must be 'reactive' or a table such as {periodic = {cron = \"0 * * * *\"}}")
        return value

    @field_validator("module")
    @classmethod
    def _module(cls, value: str) -> str:
        if not re.fullmatch(r"builtin:[a-z][a-z0-9_]{0,63}|wasm:[^\x00]{1,500}|python:[^\x00]{1,500}", value):
            raise ValueError("must be 'builtin:<name>', 'wasm:<path>' or 'python:<path>'")
        return value

    @field_validator("tags", "skills", "mcp_servers", "allowed_plugins")
    @classmethod
    def _names(cls, values: list[str]) -> list[str]:
        if len(values) > MAX_LIST:
            raise ValueError(f"at most {MAX_LIST} entries")
        for value in values:
            if not value or len(value) > 128:
                raise ValueError("entries must be 1-128 characters")
        return values

    @field_validator("tool_allowlist", "tool_blocklist")
    @classmethod
    def _tool_lists(cls, values: list[str]) -> list[str]:
        return _check_patterns(values)

    @field_validator("max_history_messages")
    @classmethod
    def _clamp_history(cls, value: int) -> int:
        return max(4, min(500, value))  # clamped, as the reference does, rather than refused

    def schedule_kind(self) -> str:
        """``reactive``, ``periodic``, ``proactive`` or ``continuous``."""
        return self.schedule if isinstance(self.schedule, str) else self.schedule.kind()

    def to_data(self) -> dict[str, Any]:
        """The keys that were set (plus unknown keys), JSON-able: what the registry stores."""
        return self.model_dump(mode="json", exclude_unset=True, exclude_none=True)

    def to_toml(self) -> str:
        """TOML text of :meth:`to_data` (keys that were set, unknown keys kept)."""
        return dump_toml(self.to_data())


def dump_toml(data: dict[str, Any]) -> str:
    """Render a manifest dict as TOML: scalars first, then tables (TOML requires that order)."""
    ordered = {k: v for k, v in data.items() if not _is_table(v)}
    ordered.update({k: v for k, v in data.items() if _is_table(v)})
    import tomlkit  # only writing TOML needs it; kept out of the daemon's start-up

    return tomlkit.dumps(ordered)


def _is_table(value: Any) -> bool:
    return isinstance(value, dict) or (isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value))


# -- parsing with line numbers ----------------------------------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_\-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_\-]+|"[^"]*"|'[^']*'))*)\s*=""")


def _split_key(key: str) -> list[str]:
    parts = re.findall(r'"([^"]*)"|\'([^\']*)\'|([A-Za-z0-9_\-]+)', key)
    return [a or b or c for a, b, c in parts]


def key_lines(text: str) -> dict[tuple[Any, ...], int]:
    """Map each key path in ``text`` to its 1-based line: ``("model", "temperature") -> 7``.

    Arrays of tables get an index (``("fallback_models", 0, "provider")``). Lines inside multi-line
    strings are skipped, so prompt text that looks like ``key = value`` is not mistaken for a key.
    """
    lines: dict[tuple[Any, ...], int] = {}
    table: tuple[Any, ...] = ()
    counters: dict[tuple[Any, ...], int] = {}
    in_string: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if in_string is not None:
            if line.count(in_string) % 2 == 1:
                in_string = None
            continue
        header = _HEADER.match(line)
        if header:
            path = tuple(_split_key(header.group(2)))
            if header.group(1) == "[[":
                index = counters.get(path, -1) + 1
                counters[path] = index
                table = (*path, index)
                lines.setdefault(path, number)
            else:
                table = path
            lines.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key:
            full = (*table, *_split_key(key.group(1)))
            lines.setdefault(full, number)
            rest = line[key.end():]
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    in_string = quote
                    break
    return lines


def line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """The line of the longest prefix of ``loc`` found in ``text`` (an inline table's key, for instance)."""
    lines = key_lines(text)
    for size in range(len(loc), 0, -1):
        if tuple(loc[:size]) in lines:
            return lines[tuple(loc[:size])]
    return None


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic adds union-branch tags (``literal['reactive']``, ``Schedule``) to locations; drop them.
    return tuple(p for p in loc if isinstance(p, int) or (isinstance(p, str) and not re.search(r"[\[\]'(]|^[A-Z]", p)))


def parse_manifest(text: str, *, name: str | None = None) -> AgentManifest:
    """Parse and validate manifest TOML; ``name`` overrides the manifest's own name.

    Raises :class:`ManifestError` naming the key and line of the first problem.
    """
    if "\x00" in text:
        raise ManifestError("Invalid manifest: NUL byte in TOML text")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        line = int(match.group(1)) if match else text.count("\n") + 1
        message = str(exc) if match else f"{exc} (line {line})"
        raise ManifestError(f"Invalid manifest: TOML syntax error: {message}", line=line) from None
    if name is not None:
        data["name"] = name
    return validate_manifest(data, text=text)


def validate_manifest(data: dict[str, Any], *, text: str = "") -> AgentManifest:
    """Validate a manifest dict; with ``text`` given, errors carry the key's TOML line."""
    try:
        return AgentManifest.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = _clean_loc(tuple(errors[0].get("loc", ())))[:1]
        # Among the errors of the first failing field, the deepest names the key best (a union
        # reports one error per branch; the branch that got furthest is the one the user meant).
        err = max(
            (e for e in errors if _clean_loc(tuple(e.get("loc", ())))[:1] == first),
            key=lambda e: len(_clean_loc(tuple(e.get("loc", ())))),
        )
        loc = _clean_loc(tuple(err.get("loc", ())))
        key = ".".join(str(p) for p in loc)
        line = line_of(text, loc) if text and loc else None
        where = f"{key} (line {line})" if line else key or "manifest"
        fields = {_clean_loc(tuple(e.get("loc", ())))[:1] for e in errors}
        more = f" (and {len(fields) - 1} more problems)" if len(fields) > 1 else ""
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        raise ManifestError(f"Invalid manifest: {where}: {msg}{more}", key=key, line=line) from None
