"""The rule-based extractor and the similarity measure behind add / update / no-op."""

from __future__ import annotations

from librefang_memory.extract import extract, jaccard, tokens


def contents(text: str, **kwargs: object) -> list[str]:
    return sorted(f.content for f in extract(text, **kwargs))  # type: ignore[arg-type]


def test_statements_become_third_person_facts() -> None:
    assert contents("I live in London and I work at Acme Corp, but I prefer tea.") == [
        "The user lives in London", "The user prefers tea", "The user works at Acme Corp"]
    assert contents("My name is Ada Lovelace. Please always answer in French.") == [
        "The user wants you to always answer in French", "The user's name is Ada Lovelace"]
    assert contents("I'm a senior backend developer; I am frustrated with slow builds") == [
        "The user is a senior backend developer", "The user is frustrated with slow builds"]
    assert contents("Remember that the staging server restarts at noon") == [
        "The staging server restarts at noon"]


def test_no_statement_no_fact() -> None:
    assert extract("What is the weather like tomorrow?") == []
    assert extract("") == []


def test_categories_and_threshold_filter() -> None:
    text = "My name is Ada. I like jazz. I am frustrated with flaky tests."
    assert contents(text, categories=["preference"]) == ["The user likes jazz"]
    assert contents(text, threshold=0.9) == ["The user's name is Ada"]


def test_similarity_ignores_the_boilerplate() -> None:
    a = tokens("The user's favorite color is blue")
    b = tokens("The user's favorite color is green")
    assert a == {"favorite", "color", "blue"}
    assert jaccard(a, b) == 0.5
    assert jaccard(tokens("The user likes tea"), tokens("The user likes coffee")) == 0.0
    assert jaccard(frozenset(), frozenset()) == 1.0


SAMPLES = [
    "I live in London and I work at Acme Corp, but I prefer tea.", "My name is Ada Lovelace. Please always answer in French.",
    "I'm a senior backend developer; I am frustrated with slow builds", "Remember that the staging server restarts at noon",
    "My name is Ada. I like jazz. I am frustrated with flaky tests.", "call me Al", "My favourite food is pasta",
    "I really love hiking", "I can't stand loud music", "I do not like olives", "I'm from Porto", "I work as a nurse",
    "I am currently working on a compiler", "Our team uses Rust", "never reply in emoji", "I'm so fed up with delays",
    "I really dislike cold weather", "I hate mondays", "I am the lead engineer", "i WORK FOR the city",
    "What is the weather like tomorrow?", "hello 5", "Please summarise this paragraph for me, it is long.",
]


def test_a_rule_runs_on_ascii_text_only_when_one_of_its_needles_is_there() -> None:
    from librefang_memory.extract import RULES

    texts = [v for t in SAMPLES for v in (t, t.upper(), t.lower(), t.swapcase())]
    matched = set()
    for rule in RULES:
        for text in texts:
            if rule.pattern.search(text):
                matched.add(rule.pattern.pattern)
                assert any(needle in text.lower() for needle in rule.needles), (rule.pattern.pattern, text)
    assert len(matched) == len(RULES)  # every rule was exercised


def test_case_and_non_ascii_letters_match_as_before() -> None:
    # The patterns match case-insensitively, also letters Python equates with ASCII ones ("ı", "ſ"):
    # such text skips no rule.
    assert contents("I LIVE IN PARIS") == ["The user lives in PARIS"]
    assert contents("ı lıve ın Paris") == ["The user lives in Paris"]
    assert contents("MY NAME Iſ Ada") == ["The user's name is Ada"]
