"""Rule-based memory extraction (the default extractor) and the similarity used to decide
add / update / no-op against what an agent already remembers.

Each rule matches a first-person statement in a user's message ("my name is …", "I prefer …") and
turns it into a third-person fact with a category and a confidence. No model is involved, so the
pipeline works offline and deterministically.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from librefang_memory.store import STOPWORDS, WORD

MAX_FACT_CHARS = 300
# "user" and its forms are in every extracted fact; they must not make two facts look alike.
SIMILARITY_STOPWORDS = STOPWORDS | {"user", "user's", "s", "likes", "like"}


@dataclass(frozen=True)
class Fact:
    """One extracted memory."""

    content: str
    category: str
    confidence: float


@dataclass(frozen=True)
class Rule:
    """A pattern and the fact it makes. ``needles``: lower-case strings of which a match always
    contains one, so a rule is not run on an ASCII text that holds none of them (most messages
    state nothing to remember, and running every pattern costs ~10 µs per 100 characters)."""

    pattern: re.Pattern[str]
    template: str
    category: str
    confidence: float
    needles: tuple[str, ...]


def _rule(pattern: str, template: str, category: str, confidence: float, needles: tuple[str, ...]) -> Rule:
    return Rule(re.compile(pattern, re.IGNORECASE), template, category, confidence, needles)


_TAIL = r"(?P<x>[^.!?\n]{2,200})"
RULES: tuple[Rule, ...] = (
    _rule(r"\bremember that " + _TAIL, "{x}", "personal_detail", 0.95, ("remember that ",)),
    _rule(r"\bmy name is (?P<x>[A-Za-z][\w'\-]*(?-i: [A-Z][\w'\-]*)?)", "The user's name is {x}", "personal_detail", 0.95,
          ("my name is ",)),
    _rule(r"\b(?:please )?call me (?P<x>[A-Za-z][\w'\-]*)", "The user wants to be called {x}", "personal_detail", 0.9,
          ("call me ",)),
    _rule(r"\bmy favou?rite (?P<k>[a-z][a-z ]{1,40}?) (?:is|are) " + _TAIL, "The user's favorite {k} is {x}",
          "preference", 0.9, ("my favo",)),
    _rule(r"\bi (?:really |strongly )?prefer " + _TAIL, "The user prefers {x}", "preference", 0.85, ("prefer ",)),
    _rule(r"\bi (?:really |absolutely )?(?:like|love|enjoy) " + _TAIL, "The user likes {x}", "preference", 0.8,
          ("like ", "love ", "enjoy ")),
    _rule(r"\bi (?:really )?(?:dislike|hate|can't stand|don't like|do not like) " + _TAIL, "The user dislikes {x}",
          "preference", 0.8, ("like ", "hate ", "stand ")),
    _rule(r"\bi live in " + _TAIL, "The user lives in {x}", "personal_detail", 0.9, ("i live in ",)),
    _rule(r"\bi(?: am|'m) from " + _TAIL, "The user is from {x}", "personal_detail", 0.85, ("from ",)),
    _rule(r"\bi work (?:at|for) " + _TAIL, "The user works at {x}", "work_style", 0.85, ("i work ",)),
    _rule(r"\bi work as (?:an? )?" + _TAIL, "The user works as {x}", "expertise", 0.85, ("i work as ",)),
    _rule(r"\bi(?: am|'m) (?:an?|the) (?P<x>[^.!?\n,]{2,80}?(?:developer|engineer|designer|manager|scientist|"
          r"teacher|student|doctor|writer|researcher|analyst|architect|consultant|expert|lawyer|nurse))\b",
          "The user is a {x}", "expertise", 0.85, ("i am ", "i'm ")),
    _rule(r"\bi(?: am|'m) (?:currently )?working on " + _TAIL, "The user is working on {x}", "project_context", 0.8,
          ("working on ",)),
    _rule(r"\bour (?:project|team|product) (?:is|uses) " + _TAIL, "The user's project uses {x}", "project_context", 0.75,
          ("our ",)),
    _rule(r"\b(?:please )?always (?P<x>(?:answer|reply|respond|write|use|keep|be) [^.!?\n]{2,200})",
          "The user wants you to always {x}", "communication_style", 0.85, ("always ",)),
    _rule(r"\b(?:please )?never (?P<x>(?:answer|reply|respond|write|use|say|be) [^.!?\n]{2,200})",
          "The user wants you to never {x}", "communication_style", 0.85, ("never ",)),
    _rule(r"\bi(?: am|'m) (?:so |really )?(?:frustrated|annoyed|fed up) (?:with|by|about) " + _TAIL,
          "The user is frustrated with {x}", "frustration", 0.75, ("frustrated ", "annoyed ", "fed up ")),
)


# A new first-person clause ends a fact: "London and I work at Acme" → "London".
_NEXT_CLAUSE = re.compile(r"[,;]?\s+(?:and|but|so|because|although)\s+(?:i|i'm|my|me)\b.*$", re.IGNORECASE)

_TRAILING_FILLER = re.compile(r"(?:\s+(?:now|too|also|as well|anyway|though|actually|these days))+$", re.IGNORECASE)


def _clean(value: str) -> str:
    value = _NEXT_CLAUSE.sub("", " ".join(value.split())).strip(" ,;:'\"")
    value = _TRAILING_FILLER.sub("", value)
    return value[:MAX_FACT_CHARS]


def extract(text: str, categories: list[str] | None = None, threshold: float = 0.0) -> list[Fact]:
    """The facts stated in ``text`` (one per rule match), keeping only ``categories`` (None = all)
    and confidences at or above ``threshold``; duplicates within the text removed."""
    facts: list[Fact] = []
    seen: set[str] = set()
    # On ASCII text lower() is exactly the case-insensitive matching of the patterns (other text may
    # hold letters the patterns equate with ASCII ones, such as "ı" or "ſ": every rule runs there).
    lowered = text.lower() if text.isascii() else None
    for rule in RULES:
        if categories is not None and rule.category not in categories:
            continue
        if rule.confidence < threshold:
            continue
        if lowered is not None and not any(needle in lowered for needle in rule.needles):
            continue
        for match in rule.pattern.finditer(text):
            values = {k: _clean(v) for k, v in match.groupdict().items() if v}
            if not values.get("x"):
                continue
            content = rule.template.format(**values)
            content = content[0].upper() + content[1:]
            key = content.lower()
            if key in seen:
                continue
            seen.add(key)
            facts.append(Fact(content, rule.category, rule.confidence))
    return facts


def tokens(text: str) -> frozenset[str]:
    """The meaningful lower-case words of ``text`` (for near-duplicate detection)."""
    return frozenset(w for w in WORD.findall(text.lower()) if w not in SIMILARITY_STOPWORDS)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a ∩ b| / |a ∪ b| (1.0 for two empty sets: both say nothing)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)
