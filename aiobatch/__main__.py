"""The ``aiobatch`` command: the console script and ``python -m aiobatch``."""

import os
import sys
from typing import NoReturn

# structlog imports rich, when it is installed, to format tracebacks; this command never
# prints one (a failure is one line and an exit code), so that import would only add ~50 ms
# to every start. None in sys.modules makes ``import rich`` fail, as if it were not there.
sys.modules.setdefault("rich", None)  # type: ignore[arg-type]

from aiobatch import cli  # noqa: E402 - after the line above, which must come first

FLUSH_FAILED = 120  # what Python itself exits with when stdout cannot be flushed at exit


def main() -> NoReturn:
    """Run the command, then leave without the interpreter's teardown.

    By the time ``cli.main`` returns, everything the command opened is closed: its runtime,
    database, spawner and threads. What the interpreter would still do is free every module
    and object one by one, ~20 ms of every run; only the standard streams need flushing.
    """
    try:
        code = cli.main()
    except* BrokenPipeError:  # stdout's reader left (a pipe into head): nowhere to say more
        code = FLUSH_FAILED
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or a broken pipe: as Python would say
            if stream is sys.stdout and code == 0:
                code = FLUSH_FAILED
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
