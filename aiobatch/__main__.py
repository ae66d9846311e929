"""The ``aiobatch`` command: the console script and ``python -m aiobatch``."""

import os
import sys
from typing import NoReturn

# structlog imports rich, when it is installed, to format tracebacks; this command never
# prints one (a failure is one line and an exit code), so that import would only add ~50 ms
# to every start. None in sys.modules makes ``import rich`` fail, as if it were not there.
sys.modules.setdefault("rich", None)  # type: ignore[arg-type]

if sys.argv[1:2] == ["run"]:
    # Its spawner's interpreter starts while the rest of aiobatch is imported, not after.
    from aiobatch.executors import spawner_process

    spawner_process.start_early()

from aiobatch import cli  # noqa: E402 - after the lines above, which must come first
from aiobatch.lossy_stream import lossy  # noqa: E402

STDOUT_FAILED = 120  # as Python itself exits when stdout cannot be written at its end


def main() -> NoReturn:
    """Run the command, then leave without the interpreter's teardown.

    Whatever goes to stderr (progress, logs, messages) is dropped once nobody can read it: a
    reader gone must not change what the command does. Stdout is the command's result: if it
    cannot be written, the exit code is 120, whatever the result was (a job that ``run`` ran
    has ended as it would have; its outcome is in the state dir).

    By the time ``cli.main`` returns, everything the command opened is closed: its runtime,
    database, spawner and threads. What the interpreter would still do is free every module
    and object one by one, ~20 ms of every run; only the standard streams need flushing.
    """
    sys.stderr = lossy(sys.stderr)
    try:
        code = cli.main()
    except* BrokenPipeError:  # stderr cannot raise it: stdout's reader left
        code = STDOUT_FAILED
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        code = STDOUT_FAILED
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
