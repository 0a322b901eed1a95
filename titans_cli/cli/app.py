"""The `titans` command: a typer app, one module per subcommand, and the exit-code contract.

Exit codes: 0 success; 2 bad usage or bad input (`titans: error: <one line>` on stderr, no
traceback); 1 internal error (one line; the traceback only under --debug or TITANS_DEBUG=1);
130/143 after Ctrl-C/SIGTERM (outputs being written are removed, earlier files kept); a closed
stdout pipe (`titans ... | head`) ends quietly with 0.
"""

from __future__ import annotations

import os
import sys
import traceback

import click
import typer
from typer import _click as typer_click  # typer vendors its own copy of click

from titans_cli.cli import classify, embed, heads, models, summarize, surprise, train
from titans_cli.errors import TitansInputError

app = typer.Typer(
    name="titans",
    help="Stream genomes and long documents through a Titans model whose memory learns while it reads.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from titans_cli import __version__

        typer.echo(f"titans {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of internal errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    if debug:
        os.environ["TITANS_DEBUG"] = "1"


app.command("surprise", help=surprise.HELP)(surprise.command)
app.command("embed", help=embed.HELP)(embed.command)
app.command("summarize", help=summarize.HELP)(summarize.command)
app.command("classify", help=classify.HELP)(classify.command)
app.add_typer(heads.app, name="heads", help=heads.HELP)
app.command("models", help=models.HELP)(models.command)
app.command("train", help=train.HELP, context_settings={"allow_extra_args": False})(train.command)


def _error(message: str) -> None:
    first = " ".join(str(message).split()) or "unknown error"
    try:
        sys.stderr.write(f"titans: error: {first}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _debug() -> bool:
    return os.environ.get("TITANS_DEBUG", "") not in ("", "0") or "--debug" in sys.argv[1:]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `titans` script and of `python -m titans_cli`; exits the process."""
    from titans_cli.io.atomic import TerminatedBySignal, handle_termination_signals, is_broken_pipe, silence_stdout_after_broken_pipe

    from titans_cli.cli import common

    command = typer.main.get_command(app)
    arguments = list(argv if argv is not None else sys.argv[1:])
    common.ARGV[:] = arguments
    code = 0
    try:
        with handle_termination_signals():
            # Not command.main(): typer's main turns Ctrl-C into exit 130 and a closed pipe into
            # exit 1 by itself; here the exit-code contract above decides.
            with command.make_context("titans", arguments) as context:
                command.invoke(context)
    except TitansInputError as error:
        _error(str(error))
        code = 2
    except (click.exceptions.NoArgsIsHelpError, typer_click.exceptions.NoArgsIsHelpError) as error:
        error.show()  # `titans` alone prints the help
        code = 2
    except (click.UsageError, typer_click.exceptions.UsageError) as error:
        # one line like every other bad input (click's own is three: usage, hint, error)
        command_path = error.ctx.command_path if error.ctx is not None else "titans"
        _error(f"{error.format_message().rstrip('.')} (see '{command_path} --help')")
        code = 2
    except (click.ClickException, typer_click.exceptions.ClickException) as error:
        error.show()
        code = 1
    except (click.exceptions.Exit, typer.Exit) as error:
        code = error.exit_code
    except TerminatedBySignal as error:
        _error(f"interrupted ({error}); no partial output was left")
        code = 128 + error.signal_number
    except (KeyboardInterrupt, click.exceptions.Abort, typer.Abort):
        _error("interrupted; no partial output was left")
        code = 130
    except BrokenPipeError:
        silence_stdout_after_broken_pipe()
        code = 0
    except SystemExit as error:  # quiet_broken_pipe and friends
        code = error.code if isinstance(error.code, int) else 0
    except Exception as error:  # noqa: BLE001 - the one place internal errors become exit 1
        if is_broken_pipe(error):
            silence_stdout_after_broken_pipe()
            code = 0
        else:
            if _debug():
                traceback.print_exc()
            _error(f"internal error: {type(error).__name__}: {error} (run with --debug for the traceback)")
            code = 1
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout_after_broken_pipe()
    except (OSError, ValueError):
        pass
    sys.exit(code)
