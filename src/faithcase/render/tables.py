"""Rich tables and number formatting shared by the stage printers and the command line."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console()  # results go to stdout; progress and messages to stderr


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def table(title: str, columns: list[str]) -> Table:
    result = Table(title=title)
    for i, column in enumerate(columns):
        result.add_column(column, justify="left" if i == 0 else "right")
    return result


def print_dict(title: str, values: dict) -> None:
    result = Table(title=title)
    result.add_column("measure")
    result.add_column("value", justify="right")
    for key, value in values.items():
        result.add_row(key, f"{value:,.3f}" if isinstance(value, float) else str(value))
    console.print(result)
