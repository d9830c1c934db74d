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
