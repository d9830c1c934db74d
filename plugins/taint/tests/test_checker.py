"""The outbound text check without HTTP: each credential shape, vault values, operator rules, and
ordinary text that must pass."""

from __future__ import annotations

import pytest
from librefang_taint.checker import builtin_kind, check, compile_rules
from librefang_taint.config import TaintRules

SINKS = {"agent_send": ["message"], "web_fetch": ["url", "body"]}
RULES = compile_rules(SINKS, [])


@pytest.mark.parametrize(("text", "kind"), [
    ("here is the key: sk-proj-AbCdEf0123456789xyzXYZ", "sk- API key"),
    ("token ghp_0123456789abcdefghijABCDEFGHIJ0123", "GitHub token"),
    ("slack xoxb-123456789012-abcdefghijkl", "Slack token"),
    ("aws AKIAIOSFODNN7EXAMPLE ok", "AWS access key id"),
    ("google AIzaSyA-0123456789abcdefghijklmnopqrstu", "Google API key"),
    ("Authorization: Basic dXNlcjpwYXNz", "Authorization header"),
    ("send it with bearer eyJhbGciOiJIUzI1NiJ9.payload", "bearer token"),
    ("config: api_key=abcdef123456", "key=value secret"),
    ('{"client_secret": "s3cr3tvalue"}', "key=value secret"),
    ("DB_PASSWORD = hunter2hunter2", "key=value secret"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nabc", "private key block"),
    ("blob Zk9xR2tLbTN2UXBzV0hhN2JuZEx5Y0ZtVDBpUWxqS3o", "long opaque token"),
])
def test_credential_shapes_are_found(text: str, kind: str) -> None:
    assert builtin_kind(text, [], 40) == kind


@pytest.mark.parametrize("text", [
    "Please summarise the quarterly report and send it to Bob by Friday.",
    "commit 3f786850e387550fdab836ed7e6dc881de23001b fixed it",  # hex digest: single case
    "session 0b8e4c1a-94f2-4d7e-9a43-2f1c7d6e5b10",  # uuid
    "https://example.com/search?q=token+bucket&page=2",
    "the password policy requires 12 characters",
    "api_key=*** was redacted",
])
def test_ordinary_text_passes(text: str) -> None:
    assert builtin_kind(text, [], 40) is None


def test_vault_values_and_percent_encoding() -> None:
    secret = "correct horse battery staple 42"
    assert builtin_kind(f"the phrase is {secret}!", [secret], 40) == "secret value from the vault"
    encoded = "https://x.example/?q=correct%20horse%20battery%20staple%2042"
    assert builtin_kind(encoded, [secret], 40) == "secret value from the vault"
    assert builtin_kind("https://x.example/?k=sk%2Dproj%2DAbCdEf0123456789xyz", [], 40) == "sk- API key"


def test_only_sink_fields_are_checked_and_nested_strings_are_seen() -> None:
    key = "sk-proj-AbCdEf0123456789xyzXYZ"
    assert check("agent_send", {"agent": key, "message": "hi"}, RULES, [], opaque_min=40, max_chars=10_000) is None
    found = check("agent_send", {"agent": "bob", "message": f"use {key}"}, RULES, [], opaque_min=40, max_chars=10_000)
    assert found is not None and (found.field, found.kind, found.rule) == ("message", "sk- API key", "sink:agent_send")
    assert check("file_write", {"content": key}, RULES, [], opaque_min=40, max_chars=10_000) is None
    rules = compile_rules({}, TaintRules.model_validate([{"name": "all-out", "tools": ["file_*"]}]).root)
    nested = check("file_write", {"a": [{"b": key}]}, rules, [], opaque_min=40, max_chars=10_000)
    assert nested is not None and nested.field == "a[0].b" and nested.rule == "all-out"


def test_operator_pattern_rule_and_size_limit() -> None:
    rules = compile_rules(SINKS, TaintRules.model_validate([
        {"name": "no-internal-hosts", "tools": ["web_fetch"], "fields": ["url"], "pattern": r"\.corp\.internal\b",
         "ignore_case": True, "builtin": False, "reason": "internal host names stay inside"}]).root)
    found = check("web_fetch", {"url": "https://wiki.CORP.internal/page"}, rules, [], opaque_min=40, max_chars=10_000)
    assert found is not None and found.rule == "no-internal-hosts" and found.kind == "internal host names stay inside"
    big = check("agent_send", {"message": "x" * 20_000}, rules, [], opaque_min=40, max_chars=10_000)
    assert big is not None and big.kind == "text too large to check"


@pytest.mark.parametrize("rules", [
    [{"name": "bad", "pattern": "(unclosed"}],
    [{"name": "empty", "builtin": False}],
    [{"name": "dup"}, {"name": "dup"}],
    [{"name": "bad name!"}],
    [{"name": "x", "fields": ["../etc"]}],
    [{"name": "x", "unknown": 1}],
])
def test_bad_rules_are_refused(rules: list[dict[str, object]]) -> None:
    with pytest.raises(ValueError):
        TaintRules.model_validate(rules)


def test_absent_rules_mean_none() -> None:
    assert TaintRules.model_validate({}).root == []


def test_authorization_prose_passes_but_header_values_do_not() -> None:
    assert builtin_kind("authorization: pending review by the team", [], 40) is None
    assert builtin_kind('headers = {"Authorization": "Token 9f8e7d6c5b4a"}', [], 40) == "Authorization header"
