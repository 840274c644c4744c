"""`faithcase config`: every config key with its type, default and description, read from the
pydantic models (`faithcase.config`); `--markdown` is docs/configuration.md."""

from __future__ import annotations

import inspect
import json
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from faithcase.config import Config, config_keys

REGENERATE = "faithcase config --markdown > docs/configuration.md"
TOP = "top"  # the name of the top-level keys in `faithcase config SECTION`
SECTION_DEFAULT = "section defaults"  # the default of a key that holds a section
BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


@dataclass
class DocSection:
    names: list[str]  # where it stands in the YAML: windows; sae1, sae2, saes.<name>
    model: type[BaseModel]

    @property
    def title(self) -> str:
        return "top level" if self.names == [TOP] else ", ".join(self.names)

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.model.__doc__ or "")

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(key, type, default, description) of each key."""
        fields = self.model.model_fields
        return [(key, type_text(fields[key]), default_text(fields[key]),
                 fields[key].description or "") for key in config_keys(self.model)]


def doc_sections() -> list[DocSection]:
    """The top level, then each section model once, in the order of Config's keys."""
    sections = [DocSection([TOP], Config)]
    by_model: dict[type[BaseModel], DocSection] = {}
    for key in config_keys(Config):
        annotation = Config.model_fields[key].annotation
        for arg in (annotation, *get_args(annotation)):
            model = get_args(arg)[1] if get_origin(arg) is dict else arg
            if isinstance(model, type) and issubclass(model, BaseModel):
                name = f"{key}.<name>" if get_origin(arg) is dict else key
                if model in by_model:
                    by_model[model].names.append(name)
                else:
                    by_model[model] = DocSection([name], model)
                    sections.append(by_model[model])
                break
    return sections


def find_section(name: str) -> DocSection | None:
    """The section `faithcase config NAME` means: top, windows, sae1, saes …"""
    for section in doc_sections():
        if name in section.names or name in (n.split(".")[0] for n in section.names):
            return section
    return None


def type_text(info: FieldInfo) -> str:
    """The field's type as a YAML writer reads it, with its bounds: `int, ≥ 1`."""
    bounds = [f"{sign} {getattr(m, attr)}" for m in info.metadata
              for attr, sign in BOUNDS.items() if getattr(m, attr, None) is not None]
    if any(getattr(m, "min_length", None) == 1 for m in info.metadata):
        bounds.append("non-empty")
    return ", ".join([_annotation_text(info.annotation), *bounds])


def _annotation_text(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_annotation_text(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_annotation_text(a) for a in args)}]"
    if origin is tuple:
        return f"[{', '.join(_annotation_text(a) for a in args)}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    if isinstance(info.default, BaseModel):
        return SECTION_DEFAULT
    return json.dumps(info.default, ensure_ascii=False)  # JSON is YAML


# ---------------------------------------------------------------- markdown


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def section_markdown(section: DocSection) -> str:
    lines = [f"## {', '.join(f'`{name}`' for name in section.names)}"
             if section.names != [TOP] else "## Top level", ""]
    if section.doc:
        lines += [" ".join(section.doc.split()), ""]
    lines += ["| key | type | default | description |", "|---|---|---|---|"]
    lines += [f"| `{key}` | `{_cell(kind)}` | `{_cell(default)}` | {_cell(description)} |"
              for key, kind, default, description in section.rows()]
    return "\n".join(lines) + "\n"


def render_configuration_docs() -> str:
    """docs/configuration.md: every section's keys, from the models' field descriptions."""
    head = ("# Configuration\n\n"
            f"<!-- Generated from the config models (src/faithcase/config.py, config_sections.py) "
            f"by `{REGENERATE}`; do not edit by hand. -->\n\n"
            "A run reads one YAML file (`--config`; default: the embedded demo config). "
            "`--set KEY=VALUE` overrides any key, dotted by section, e.g. "
            "`--set windows.top=5`; `faithcase config [SECTION]` prints these tables. "
            "Relative paths start at the config file's folder; `pkg:<package>/<path>` points "
            "inside an installed package.\n")
    return "\n".join([head, *(section_markdown(s) for s in doc_sections())])


# ---------------------------------------------------------------- the command


def section_table(section: DocSection) -> Table:
    """Two columns, to fit a terminal: the key with its type and default below it, and the
    description."""
    result = Table(title=f"[bold]{escape(section.title)}[/bold]",
                   caption=escape(" ".join(section.doc.split())),
                   title_justify="left", caption_justify="left", show_lines=True)
    result.add_column("key", max_width=30, overflow="fold")
    result.add_column("description", ratio=1)
    for key, kind, default, description in section.rows():
        cell = Text(key, style="bold")
        shown = default if default in ("required", SECTION_DEFAULT) else f"default {default}"
        cell.append(f"\n{kind}\n{shown}", style="dim")  # Text: list[float] is no markup
        result.add_row(cell, Text(description))
    return result


def config_command(
    section: Annotated[Optional[str], typer.Argument(
        help=f"One section: {TOP} (the top-level keys), model, sae1, corpus, windows …; "
             "default: all.", metavar="SECTION", show_default=False)] = None,
    markdown: Annotated[bool, typer.Option(
        "--markdown", help="Markdown instead of tables (all sections: docs/configuration.md).")
    ] = False,
) -> None:
    """Every config key: its type, default and description (what --set takes).

    `faithcase config --markdown > docs/configuration.md` regenerates the documentation."""
    chosen = doc_sections()
    if section is not None:
        found = find_section(section)
        if found is None:
            names = ", ".join(s.names[0].split(".")[0] for s in doc_sections())
            Console(stderr=True).print(f"[bold red]error:[/bold red] no config section "
                                       f"{section!r}; sections: {names}", highlight=False,
                                       soft_wrap=True)
            raise typer.Exit(2)
        chosen = [found]
    if markdown:
        text = render_configuration_docs() if section is None else section_markdown(chosen[0])
        typer.echo(text, nl=False)
        return
    console = Console()
    for doc_section in chosen:
        console.print(section_table(doc_section))
