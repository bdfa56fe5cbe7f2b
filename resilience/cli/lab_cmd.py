"""``resilience lab`` (placeholder until the lab lands)."""

import click


@click.group()
def lab() -> None:
    """The network-namespace test lab."""
