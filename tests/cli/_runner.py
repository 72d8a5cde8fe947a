"""The CLI through typer's CliRunner, stdout and stderr kept apart (click < 8.2 mixes them unless told not to)."""

from typer.testing import CliRunner

from ssmprune_cli import cli


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def run(*args, env=None):
    return runner().invoke(cli.app, [str(a) for a in args], env=env)
