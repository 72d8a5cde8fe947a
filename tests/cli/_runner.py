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


def selected_here(request) -> set:
    """Names of the tests pytest collected from the requesting module (a module fixture that starts subprocesses for
    its tests up front starts only these)."""
    return {item.originalname for item in request.session.items if item.module is request.module}
