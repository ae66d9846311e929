"""The client commands' names are given twice: in ``cli_client.COMMANDS`` (read at start, so
that ``aiobatch`` loads no handler until one runs) and as ``cli_client_handlers.HANDLERS``.
They, and the parser's subcommands, must be the same."""

from __future__ import annotations

import argparse
import subprocess
import sys

from aiobatch import cli_client
from aiobatch.cli_client_handlers import HANDLERS


def test_every_client_command_has_a_handler_and_a_parser() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command")
    cli_client.add_commands(commands)
    assert set(commands.choices) == set(HANDLERS) == cli_client.COMMANDS
    assert {"submit", "logs", "envs", "env"} <= cli_client.COMMANDS


def test_starting_the_command_loads_no_client_handler_or_aiohttp() -> None:
    code = (
        "import sys, aiobatch.cli;"
        "print(sorted(m for m in sys.modules if m in "
        "('aiobatch.cli_client_handlers', 'aiobatch.client', 'aiohttp')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
