"""The ``aiobatch`` command: the console script and ``python -m aiobatch``."""

import sys

# structlog imports rich, when it is installed, to format tracebacks; this command never
# prints one (a failure is one line and an exit code), so that import would only add ~50 ms
# to every start. None in sys.modules makes ``import rich`` fail, as if it were not there.
sys.modules.setdefault("rich", None)  # type: ignore[arg-type]

from aiobatch.cli import main  # noqa: E402 - after the line above, which must come first

if __name__ == "__main__":
    sys.exit(main())
