"""The pure core (engine and its parts, the records and their states, the resolver, the
scheduler) stands alone: it imports nothing from the executors, the hooks or the runtime,
and does no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import aiobatch

PACKAGE = Path(aiobatch.__file__).parent
CORE = (
    "engine", "changes", "endings", "reasons", "backoff", "gates",
    "model", "states", "resolver", "scheduler",
)  # fmt: skip
# The runtime and its parts, and what performs effects: nothing the core may reach.
OUTSIDE_CORE = (
    "executors", "hooks", "runtime", "attempts", "restart", "commands", "queries",
    "resources", "health", "store", "database", "server", "service", "cli",
    "contexts", "ended_jobs", "runtime_logview", "runtime_reads",
)  # fmt: skip
IO_MODULES = {"anyio", "asyncio", "aiosqlite", "aiodocker", "aiohttp", "sqlite3", "subprocess"}


def imported(module: str) -> set[str]:
    """Every module ``aiobatch.<module>`` imports, type-checking imports included."""
    path = PACKAGE.joinpath(*module.split(".")).with_suffix(".py")
    if not path.exists():
        path = PACKAGE.joinpath(*module.split("."), "__init__.py")
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == "aiobatch":  # from aiobatch import resolver
                names.update(f"aiobatch.{alias.name}" for alias in node.names)
            else:
                names.add(node.module)
    return names


def reached_from_core() -> set[str]:
    """The aiobatch modules the core imports, directly or through each other."""
    seen: set[str] = set()
    todo = list(CORE)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            ours = (name for name in imported(module) if name.startswith("aiobatch."))
            todo += [name.removeprefix("aiobatch.") for name in ours]
    return seen


def test_the_core_reaches_no_executor_hook_or_runtime_module() -> None:
    reached = reached_from_core()
    assert "engine" in reached and "model" in reached  # the walk follows imports
    assert not {m for m in reached if m.split(".")[0] in OUTSIDE_CORE}


def test_the_core_imports_no_io_library() -> None:
    for module in CORE:
        roots = {name.split(".")[0] for name in imported(module)}
        assert not roots & IO_MODULES, module


def test_records_are_structs_not_dataclasses() -> None:
    """Every start of the command imports most of the package: a frozen dataclass costs
    ~0.5 ms to build there (its methods are compiled from source), a msgspec Struct ~20 µs.
    24 dataclasses were ~20 ms of each start."""
    users = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "dataclasses" in {name.split(".")[0] for name in imported_by_path(path)}
    ]
    assert users == []


def imported_by_path(path: Path) -> set[str]:
    module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    return imported(module.removesuffix(".__init__"))
