"""``librefang example-greet NAME``: a plugin CLI command (runs in the CLI process, not the daemon)."""

from __future__ import annotations

import click


@click.command("example-greet")
@click.argument("name")
def example_greet(name: str) -> None:
    """Print the greeting configured in [example] for NAME."""
    from librefang.config import Config, default_home

    from librefang_example.config import ExampleConfig

    section = ExampleConfig.model_validate(Config.load(default_home()).raw.get("example", {}))
    click.echo(f"{section.greeting}, {name}!")
