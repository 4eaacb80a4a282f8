"""`seqfit` command line: the group and its error handling; each subcommand lives in its own module."""

from __future__ import annotations

import errno
import sys

import click

from seqfit.version import __version__
from seqfit.cli.detect_cmd import detect
from seqfit.cli.inspect_cmd import profile, report
from seqfit.cli.plan_cmd import plan
from seqfit.cli.predict_cmd import predict
from seqfit.cli.prepare_cmd import prepare
from seqfit.cli.train_cmd import evaluate, generate, train
from seqfit.cli.translate_cmd import translate
from seqfit.errors import EXIT_ERROR, SeqfitError

__all__ = ["main", "cli"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="seqfit")
def cli() -> None:
    """Train RNN/LSTM/GRU models on data and models larger than your memory."""


for command in (prepare, plan, train, evaluate, generate, predict, detect, translate, profile, report):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="seqfit", standalone_mode=False)
    except SeqfitError as e:
        click.echo(f"seqfit: error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("seqfit: aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:  # bad flag or value: one line, like a SeqfitError (click's exit code, 2)
        where = f"; see '{e.ctx.command_path} -h'" if e.ctx else ""
        click.echo(f"seqfit: error: {e.format_message().replace(chr(10), ' ')}{where}", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except OSError as e:
        # The machine, not the program: a full disk or a read-only/forbidden place met while writing
        # (metrics, config, ...). Files are written atomically, so what was there is intact; say so in one line.
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise
        where = f": {e.filename}" if e.filename else ""
        click.echo(f"seqfit: error: {e.strerror}{where}", err=True)
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":
    main()
