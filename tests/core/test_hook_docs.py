"""Every hook is documented in docs/plugins.md and implemented by some test.

Hooks are the core's (``librefang.hookspecs``) and those offered by installed plugins (the
``hookspecs`` attribute of their entry-point module). "Documented" means a ``### `name(args)```
heading whose arguments match the hookspec, followed by a Python example that defines the hook
with ``@hookimpl``. "Tested" means some test file (outside this one) implements it.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
from pathlib import Path
from typing import Any

from librefang import hookspecs
from librefang.markers import PROJECT

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "plugins.md"
SPEC_MARK = f"{PROJECT}_spec"  # the attribute pluggy's HookspecMarker sets


def spec_functions(namespace: Any) -> dict[str, list[str]]:
    """Hook name -> argument names of every hookspec in ``namespace``."""
    found = {}
    for name in dir(namespace):
        value = getattr(namespace, name, None)
        if callable(value) and hasattr(value, SPEC_MARK):
            found[name] = list(inspect.signature(value).parameters)
    return found


def all_hooks() -> dict[str, tuple[str, list[str]]]:
    """Hook name -> (who offers it, argument names)."""
    hooks = {name: ("core", args) for name, args in spec_functions(hookspecs).items()}
    for entry_point in importlib.metadata.entry_points(group="librefang.plugins"):
        try:
            module = entry_point.load()
        except Exception:  # noqa: BLE001 - a broken plugin is reported by the host, not here
            continue
        offered = getattr(module, "hookspecs", None)
        if offered is not None:
            for name, args in spec_functions(offered).items():
                hooks.setdefault(name, (entry_point.name, args))
    return hooks


def sections(markdown: str) -> dict[str, str]:
    """``### `` heading -> the text up to the next heading of level 1-3."""
    parts = re.split(r"(?m)^(#{1,3} .*)$", markdown)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2) if parts[i].startswith("### ")}


def doc_problems(hooks: dict[str, tuple[str, list[str]]], markdown: str) -> list[str]:
    """What is missing or wrong in the documentation of ``hooks``."""
    problems = []
    by_heading = sections(markdown)
    for name, (owner, args) in sorted(hooks.items()):
        entries = [(h, body) for h, body in by_heading.items() if re.match(rf"### `{name}\(", h)]
        if not entries:
            problems.append(f"{name} (offered by {owner}) has no '### `{name}({', '.join(args)})`' section")
            continue
        heading, body = entries[0]
        documented = [a.strip() for a in heading.split("(", 1)[1].split(")", 1)[0].split(",") if a.strip()]
        if documented != args:
            problems.append(f"{name}: heading says ({', '.join(documented)}), the hookspec takes ({', '.join(args)})")
        if not re.search(rf"```python\n(?:.*\n)*?@hookimpl\s*\n\s*(?:async\s+)?def {name}\(", body):
            problems.append(f"{name}: no ```python example defining it with @hookimpl")
    return problems


def sources_of_tests() -> list[Path]:
    roots = [ROOT / "tests", ROOT / "core" / "tests", *sorted((ROOT / "plugins").glob("*/tests")),
             ROOT / "docs" / "plugin-template" / "tests"]
    here = Path(__file__).resolve()
    return [p for root in roots if root.is_dir() for p in sorted(root.rglob("*.py")) if p.resolve() != here]


def untested(hooks: dict[str, tuple[str, list[str]]], sources: list[str]) -> list[str]:
    """Hooks no test implements (``def name(`` or ``name=hookimpl(``)."""
    missing = []
    for name in sorted(hooks):
        pattern = re.compile(rf"\bdef {name}\(|\b{name}\s*=\s*(?:librefang\.)?hookimpl\(")
        if not any(pattern.search(text) for text in sources):
            missing.append(name)
    return missing


def test_every_hook_is_documented_with_signature_and_example():
    hooks = all_hooks()
    assert {"startup", "shutdown", "register_config", "register_routes", "register_commands"} <= set(hooks)
    problems = doc_problems(hooks, DOC.read_text())
    assert not problems, "docs/plugins.md needs:\n  " + "\n  ".join(problems)


def test_every_hook_is_implemented_by_some_test():
    hooks = all_hooks()
    missing = untested(hooks, [p.read_text(errors="replace") for p in sources_of_tests()])
    assert not missing, f"no test implements these hooks: {', '.join(missing)}"


def test_the_checks_catch_missing_and_stale_docs_and_tests():
    hooks = {"register_widgets": ("widgets", ["register"]), "startup": ("core", ["kernel"])}
    good = (
        "### `register_widgets(register)`\n\ntext\n\n```python\n@hookimpl\ndef register_widgets(register):\n"
        "    register(1)\n```\n\n### `startup(kernel)`\n\n```python\n@hookimpl\nasync def startup(kernel):\n"
        "    pass\n```\n"
    )
    assert doc_problems(hooks, good) == []
    missing_section = doc_problems(hooks, good.split("### `startup")[0])
    assert missing_section == ["startup (offered by core) has no '### `startup(kernel)`' section"]
    stale = doc_problems(hooks, good.replace("`startup(kernel)`", "`startup(kernel, app)`"))
    assert stale == ["startup: heading says (kernel, app), the hookspec takes (kernel)"]
    no_example = doc_problems(hooks, good.replace("async def startup(kernel)", "async def other(kernel)"))
    assert no_example == ["startup: no ```python example defining it with @hookimpl"]

    assert untested(hooks, ["x = SimpleNamespace(startup=hookimpl(lambda kernel: None))"]) == ["register_widgets"]
    assert untested(hooks, ["    def register_widgets(self, register):", "startup = hookimpl(f)"]) == []
