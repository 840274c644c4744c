"""What the faithcase commands share: the consoles, the one-line error rule, the run options and
the Runtime they build. The commands live in cli.py and tools/commands.py."""

import errno
import inspect
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional, get_type_hints

import click
import typer
from rich.console import Console

from faithcase.run.errors import FaithcaseError

console = Console()
err_console = Console(stderr=True)
DEBUG = {"on": bool(os.environ.get("FAITHCASE_DEBUG"))}


def _error(message: str) -> None:
    err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)


def describe_os_error(err: OSError) -> str:
    """One line for an error of the machine: what failed, on which file, and what to do."""
    where = f" {err.filename}" if err.filename else ""
    if err.errno == errno.ENOSPC:
        return f"no space left on the device writing{where}: free some space or choose another " \
               "--out-dir"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied:{where}: check its permissions or choose another --out-dir"
    if err.errno == errno.EROFS:
        return f"read-only file system:{where}: choose another --out-dir"
    return f"{err.strerror or type(err).__name__}:{where}"


@contextmanager
def user_errors():
    """Errors a user or the machine causes become one line and exit 2; Ctrl-C exits 130; any
    other exception is a bug: one line, exit 1, and the traceback under --debug."""
    from faithcase.run.graph import failed_stage

    try:
        yield
    except (typer.Exit, click.exceptions.ClickException, click.exceptions.Abort):
        raise
    except FaithcaseError as err:
        _error(str(err))
        raise typer.Exit(2) from None
    except KeyboardInterrupt as err:
        stage = failed_stage(err)
        where = f" during {stage}" if stage else ""
        err_console.print(f"interrupted{where}; finished stages are kept")
        raise typer.Exit(130) from None
    except OSError as err:
        if DEBUG["on"]:
            raise
        _error(describe_os_error(err))
        raise typer.Exit(2) from None
    except Exception as err:  # noqa: BLE001 - anything else is a bug in faithcase
        if DEBUG["on"]:
            raise
        _error(f"internal error {type(err).__name__}: {' '.join(str(err).split())[:300]} "
               "(a bug: rerun with `faithcase --debug …` for the traceback)")
        raise typer.Exit(1) from None


# ================================================================ shared options


@dataclass
class RunOptions:
    config: Optional[str] = None
    out_dir: Optional[Path] = None
    sae1: Optional[str] = None
    sae2: Optional[str] = None
    n_pairs: Optional[int] = None
    device: Optional[str] = None
    scales: Optional[str] = None
    force: bool = False
    force_all: bool = False
    strict: bool = False
    no_wait: bool = False
    set_: Optional[list[str]] = None


def _option(*names: str, help: str):
    return typer.Option(*names, help=help)


RUN_OPTIONS: dict[str, tuple[Any, Any]] = {
    "config": (Optional[str], _option("--config", "-c", help="YAML config (default: the demo).")),
    "out_dir": (Optional[Path], _option("--out-dir",
                                        help="Run folder (default outputs/<run name>).")),
    "sae1": (Optional[str], _option("--sae1",
                                    help="First SAE folder (replaces the config's sae1).")),
    "sae2": (Optional[str], _option("--sae2",
                                    help="Second SAE folder (replaces the config's sae2).")),
    "n_pairs": (Optional[int], _option("--n-pairs", help="Pairs per kind: best, worst, random.")),
    "device": (Optional[str], _option("--device", help="auto, cpu, cuda, cuda:1 …")),
    "scales": (Optional[str], _option("--scales", help="auto, or a list like 4,8,16 (× norm).")),
    "force": (bool, _option("--force", help="Rerun this stage even when it is up to date.")),
    "force_all": (bool, _option("--force-all", help="Rerun this stage and every stage upstream.")),
    "strict": (bool, _option("--strict", help="A failed load check or an edited artifact is an "
                                               "error (exit 2), not a warning and a rerun.")),
    "no_wait": (bool, _option("--no-wait", help="Fail at once when another run holds the folder.")),
    "set_": (Optional[list[str]], _option("--set", help="Any config key: --set windows.top=5 "
                                                        "(keys: `faithcase config`).")),
}


def with_run_options(fn):
    """A command taking (opts: RunOptions, **its own options): the shared options are added to its
    signature, and errors become one line (see `user_errors`)."""
    own = [p for name, p in inspect.signature(fn).parameters.items() if name != "opts"]
    hints = {name: hint for name, hint in get_type_hints(fn, include_extras=True).items()
             if name != "opts"}
    defaults = RunOptions.__dataclass_fields__
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                default=defaults[name].default,
                                annotation=Annotated[hint, option])
              for name, (hint, option) in RUN_OPTIONS.items()]

    def command(**kwargs):
        opts = RunOptions(**{name: kwargs.pop(name) for name in RUN_OPTIONS})
        with user_errors():
            return fn(opts, **kwargs)

    command.__name__, command.__doc__ = fn.__name__, fn.__doc__
    command.__signature__ = inspect.Signature(own + shared)
    command.__annotations__ = hints | {p.name: p.annotation for p in shared}
    return command


def _absolute(path: str | Path | None) -> str | None:
    if path is None:
        return None
    text = str(path)
    return text if text.startswith("pkg:") else str(Path(text).expanduser().resolve())


def parse_scales(value: str | None):
    if value is None:
        return None
    if value.strip() == "auto":
        return "auto"
    parts = [p for p in value.replace(" ", "").split(",") if p]
    if not parts:
        raise FaithcaseError("--scales is empty: give auto or a list like 4,8,16")
    try:
        scales = [float(p) for p in parts]
    except ValueError:
        raise FaithcaseError(f"--scales must be auto or numbers separated by commas, "
                             f"got {value!r}") from None
    if any(s <= 0 for s in scales):
        raise FaithcaseError(f"--scales must be positive, got {value!r}")
    return scales


def runtime(opts: RunOptions):
    """The Runtime of these options: the config with the command-line overrides applied."""
    from faithcase.config import load_config
    from faithcase.run.runtime import Runtime

    overrides = {"out_dir": _absolute(opts.out_dir), "pairs.n_pairs": opts.n_pairs,
                 "device": opts.device, "explain.scales": parse_scales(opts.scales),
                 "scan.strict": opts.strict or None}
    for key in ("sae1", "sae2"):
        path = getattr(opts, key)
        if path is not None:  # a new SAE: its format is detected again
            overrides[key] = {"path": _absolute(path)}
    cfg = load_config(opts.config, overrides=overrides, sets=opts.set_)
    set_threads()
    cfg, console_of_rank = split_pass(cfg)
    return Runtime(cfg, console=console_of_rank)


def split_pass(cfg):
    """Under torchrun (WORLD_SIZE > 1): join the process group; each rank on its own GPU; ranks
    other than 0 work quietly in .shards/rank<r>/ of the run folder (run/shards.py)."""
    from faithcase.run import shards

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return cfg, err_console
    from faithcase.model.lm import resolve_device

    device = resolve_device(cfg.device)
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    shard = shards.init_from_env(device)
    update = {"device": device}
    if shard.rank > 0:
        update["out_dir"] = str((cfg.output_dir() / ".shards" / f"rank{shard.rank}").resolve())
    return cfg.model_copy(update=update), (err_console if shard.rank == 0 else
                                           Console(stderr=True, quiet=True))


@contextmanager
def pipeline(opts: RunOptions, force: tuple[str, ...] = (),
             targets: tuple[str, ...] | None = None, rt=None):
    """The pipeline's graph run on these options' run folder, under the folder's lock; the
    embedder is checked up front when reaching `targets` (default: all) runs embed."""
    from faithcase.pipeline import open_run

    with open_run(rt or runtime(opts), force, strict=opts.strict, wait=not opts.no_wait,
                  targets=targets) as graph:
        yield graph


def set_threads() -> None:
    """Every core (FAITHCASE_THREADS to choose), shared among torchrun's local processes."""
    import torch

    cores = int(os.environ.get("FAITHCASE_THREADS") or os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
