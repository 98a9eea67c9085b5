"""The ``sslkit`` command line: one module per subcommand, each with a ``register(app)``.

Only subcommands that work are registered.  Errors: a :class:`UserError`
prints ``error: <file>: <what> — <what to do>`` and exits 2; any other
exception prints one line and exits 1 (``--verbose`` shows the traceback).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import typer

from sslkit import __version__
from sslkit.errors import UserError

#: subcommand modules under sslkit.cli, in the order ``--help`` lists them
COMMAND_MODULES = ["demo_data", "info", "propose", "sample_views", "show", "export", "linprobe", "pretrain", "plot", "detect", "semisup"]

app = typer.Typer(
    name="sslkit",
    help="Object- and region-level self-supervised pretraining on scene images, as composable stages.\n\n"
    "Stages pass HDF5/.pth artefacts on disk: propose → sample-views → pretrain → export → linprobe/detect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"verbose": False}


def _version(value: bool):
    if value:
        typer.echo(f"sslkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    _state["verbose"] = verbose or bool(os.environ.get("SSLKIT_VERBOSE"))
    from sslkit._env import FIX, opencv_conflict

    conflict = opencv_conflict()
    if conflict:
        sys.stderr.write(f"warning: {conflict}; fix: {FIX}\n")


for _name in COMMAND_MODULES:
    importlib.import_module(f"sslkit.cli.{_name}").register(app)


def _error(msg: str) -> None:
    sys.stderr.write(f"error: {msg}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point. Usage errors are typer's (exit 2); ours are one line."""
    args = sys.argv[1:] if argv is None else argv
    verbose = bool(os.environ.get("SSLKIT_VERBOSE")) or any(a in ("--verbose", "-v") for a in args[:1])
    try:
        app(args=args, prog_name="sslkit")
    except UserError as e:
        if verbose or _state["verbose"]:
            traceback.print_exc()
        _error(e.line())
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        _error("interrupted")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the one place that turns failures into a line
        if verbose or _state["verbose"]:
            traceback.print_exc()
            _error(f"{type(e).__name__}: {e}")
        else:
            _error(f"{type(e).__name__}: {e} (rerun with --verbose for the traceback)")
        sys.exit(1)
