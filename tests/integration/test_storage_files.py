"""Storage mappings and log redirects through the ``file://`` backend, with real files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from aiobatch import JobSnapshot, Runtime
from aiobatch.hooks import HookContext, HookFailed
from aiobatch.storage.base import StorageError, inside

pytestmark = pytest.mark.anyio


def job(task: dict[str, Any]) -> dict[str, Any]:
    return {"name": "files", "tasks": [{"name": "t", **task}]}


async def test_inputs_outputs_and_log_redirects(state_dir: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    (remote / "in" / "sub").mkdir(parents=True)
    (remote / "in" / "a.txt").write_text("A")
    (remote / "in" / "sub" / "b.txt").write_text("B")
    (remote / "single.txt").write_text("S")
    spec = job(
        {
            "instances": 2,
            "inputs": [
                {"from": f"file://{remote}/single.txt", "path": "data/single.txt"},
                {"from": f"file://{remote}/in/", "path": "tree/"},
            ],
            "outputs": [
                {"path": "result.txt", "to": f"file://{remote}/out/{{job}}/{{index}}/"},
                {"path": "folder/", "to": f"file://{remote}/out/{{job}}/{{index}}/folder/"},
            ],
            "stdout": f"file://{remote}/logs/",
            "stderr": f"file://{remote}/logs/t.{{index}}.err",
            "command": "cat data/single.txt tree/a.txt tree/sub/b.txt > result.txt; "
            "mkdir -p folder/deep; echo x > folder/deep/y; echo out; echo err >&2",
        }
    )
    async with Runtime(state_dir) as rt:
        await (await rt.submit(spec)).wait_for_success()
    for index in (0, 1):
        out = remote / "out" / "files" / str(index)
        assert (out / "result.txt").read_text() == "SAB"
        assert (out / "folder" / "deep" / "y").read_text() == "x\n"
        assert (remote / "logs" / f"t.{index}.stdout").read_text() == "out\n"
        assert (remote / "logs" / f"t.{index}.err").read_text() == "err\n"


async def test_missing_input_fails_the_attempt_and_is_retried(
    state_dir: Path, tmp_path: Path
) -> None:
    missing = f"file://{tmp_path}/nothing.txt"
    spec = job({"inputs": [{"from": missing, "path": "x"}], "command": "true", "retries": 1})
    async with Runtime(state_dir) as rt:
        j = await rt.submit(spec)
        await j.wait_for_completion()
        [inst] = (await j.get_task_result("t")).instances or []
    assert (inst.status, inst.attempts) == ("FAILED", 2)
    assert inst.reason == f"stage_in_failed: {missing} not found"


async def test_missing_output_fails_a_successful_exit(state_dir: Path, tmp_path: Path) -> None:
    spec = job(
        {
            "outputs": [{"path": "never.txt", "to": f"file://{tmp_path}/out.txt"}],
            "stdout": f"file://{tmp_path}/logs/",
            "command": "echo ran",
        }
    )
    async with Runtime(state_dir) as rt:
        j = await rt.submit(spec)
        await j.wait_for_completion()
        [inst] = (await j.get_task_result("t")).instances or []
    assert (inst.status, inst.exit_code) == ("FAILED", 0)
    assert inst.reason == "stage_out_failed: output never.txt does not exist"
    assert (tmp_path / "logs" / "t.0.stdout").read_text() == "ran\n"  # logs go out anyway


async def test_outputs_when_always_and_logs_after_a_failure(
    state_dir: Path, tmp_path: Path
) -> None:
    spec = job(
        {
            "outputs": [
                {"path": "partial.txt", "to": f"file://{tmp_path}/always.txt", "when": "always"},
                {"path": "partial.txt", "to": f"file://{tmp_path}/success.txt"},
            ],
            "stderr": f"file://{tmp_path}/err.txt",
            "command": "echo half > partial.txt; echo broke >&2; exit 4",
        }
    )
    async with Runtime(state_dir) as rt:
        j = await rt.submit(spec)
        await j.wait_for_completion()
        [inst] = (await j.get_task_result("t")).instances or []
    assert inst.reason == "exit_code: 4"
    assert (tmp_path / "always.txt").read_text() == "half\n"
    assert not (tmp_path / "success.txt").exists()
    assert (tmp_path / "err.txt").read_text() == "broke\n"


async def test_user_hooks_run_and_fail_with_their_reason(state_dir: Path) -> None:
    seen: list[tuple[str, int]] = []

    async def remember(context: HookContext) -> None:
        seen.append((context.instance.task.name, context.instance.index))
        (context.instance.work_dir / "from-hook").write_text("hi")

    async def refuse(context: HookContext) -> None:
        if context.instance.task.name == "refused":
            raise HookFailed("quota_exceeded: 3 of 2")

    spec = {
        "name": "hooked",
        "tasks": [
            {"name": "ok", "command": "cat from-hook"},
            {"name": "refused", "command": "true", "on_failure": "continue"},
        ],
    }
    async with Runtime(state_dir) as rt:
        rt.hooks.before_start += [remember, refuse]
        j = await rt.submit(spec)
        snapshot = await j.wait_for_completion()
        [refused] = (await j.get_task_result("refused")).instances or []
    assert sorted(seen) == [("ok", 0), ("refused", 0)]
    assert snapshot.tasks["ok"].status == "SUCCEEDED"
    assert (state_dir / "logs" / j.id / "ok" / "0.stdout").read_text() == "hi"
    assert refused.reason == "quota_exceeded: 3 of 2"


async def test_a_hooks_error_becomes_a_reason_that_is_never_empty_nor_a_terminals_command(
    state_dir: Path,
) -> None:
    """A hook's error (a copy's, naming a file the task chose) is the attempt's reason:
    its control characters are shown escaped, and an error without a message is named."""

    async def failing(context: HookContext) -> None:
        if context.instance.index == 0:
            raise OSError("\x1b]0;title\x07\x1b[2J\nFAKE LINE: job SUCCEEDED")
        raise MemoryError

    task = {"name": "t", "instances": 2, "command": "true", "on_failure": "continue"}
    spec = {"name": "odd", "tasks": [task]}
    async with Runtime(state_dir) as rt:
        rt.hooks.after_exit.append(failing)
        j = await rt.submit(spec)
        await j.wait_for_completion()
        reasons = [i.reason for i in (await j.get_task_result("t")).instances or []]
    assert reasons == [
        "stage_out_failed: \\x1b]0;title\\x07\\x1b[2J\\nFAKE LINE: job SUCCEEDED",
        "stage_out_failed: MemoryError",
    ]


def test_paths_never_leave_the_work_dir(tmp_path: Path) -> None:
    assert inside(tmp_path, "a/b/../c") == tmp_path / "a" / "c"
    for bad in ("../x", "a/../../x", "/etc/passwd"):
        with pytest.raises(StorageError, match="would land outside"):
            inside(tmp_path, bad)


async def test_on_job_end_hooks_get_the_final_snapshot(state_dir: Path) -> None:
    ended: list[str] = []
    called = anyio.Event()

    async def broken(snapshot: JobSnapshot) -> None:
        raise RuntimeError("a bug in a user hook")

    async def notify(snapshot: JobSnapshot) -> None:
        ended.append(f"{snapshot.name}:{snapshot.status}")
        called.set()

    async with Runtime(state_dir) as rt:
        rt.hooks.on_job_end += [broken, notify]
        handle = await rt.submit(job({"command": "exit 2"}))
        with anyio.fail_after(20):
            await called.wait()
        assert (await handle.snapshot()).status == "FAILED"  # the hooks change nothing
    assert ended == ["files:FAILED"]


async def test_an_output_that_is_a_link_is_refused_and_links_in_a_folder_are_skipped(
    state_dir: Path, tmp_path: Path
) -> None:
    """What a task leaves at an output's place is read without following a link: a link
    there (to a file or a folder the task could not read itself), or under a folder of
    its own, uploads nothing of what it points to; FIFOs and devices are no files."""
    secret = tmp_path / "secret"
    (secret / "inner").mkdir(parents=True)
    (secret / "inner" / "key").write_text("KEY")
    out = tmp_path / "out"
    made = (
        f"ln -s {secret}/inner/key key.txt; ln -s {secret} linked; mkdir -p via; "
        f"ln -s {secret} via/sub; mkdir folder; echo mine > folder/mine; "
        f"ln -s {secret}/inner/key folder/key; ln -s {secret} folder/dir; mkfifo folder/fifo; "
        "mknod folder/zero c 1 5"
    )
    tasks = [
        {"name": name, "command": made, "on_failure": "continue", "outputs": [output]}
        for name, output in (
            ("file", {"path": "key.txt", "to": f"file://{out}/file/key.txt"}),
            ("folder", {"path": "linked/", "to": f"file://{out}/folder/"}),
            ("below", {"path": "via/sub/inner/key", "to": f"file://{out}/below/key"}),
            ("mixed", {"path": "folder/", "to": f"file://{out}/mixed/"}),
            ("fifo", {"path": "folder/fifo", "to": f"file://{out}/fifo/x"}),
        )
    ]
    async with Runtime(state_dir) as rt:
        j = await rt.submit({"name": "links", "tasks": tasks})
        with anyio.fail_after(30):  # a FIFO read would block for ever
            await j.wait_for_completion()
        reasons = {
            name: ((await j.get_task_result(name)).instances or [])[0].reason
            for name in ("file", "folder", "below", "mixed", "fifo")
        }
    link = "stage_out_failed: output {} is a link or not a regular file"
    assert reasons == {
        "file": link.format("key.txt"),
        "folder": link.format("linked/"),
        "below": "stage_out_failed: via/sub/inner/key: sub: not a folder (a link, or a file)",
        "mixed": None,
        "fifo": link.format("folder/fifo"),
    }
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["mixed", "mixed/mine"]
    assert "KEY" not in "".join(p.read_text() for p in out.rglob("*") if p.is_file())


async def test_a_retry_replaces_the_links_an_attempt_left_where_its_inputs_go(
    state_dir: Path, tmp_path: Path
) -> None:
    """An attempt replaces its inputs with links to files and folders outside its work dir,
    then fails; the next attempt's inputs go where the links were, and nothing is written
    through them."""
    remote = tmp_path / "remote"
    (remote / "tree").mkdir(parents=True)
    (remote / "input.txt").write_text("input")
    (remote / "tree" / "planted.conf").write_text("planted")
    victim, victim_dir = tmp_path / "victim", tmp_path / "victim_dir"
    victim.write_text("untouched")
    victim_dir.mkdir()
    first = (
        f'if [ "$AIOBATCH_ATTEMPT" = 1 ]; then rm -rf in.txt data deep; '
        f"ln -s {victim} in.txt; ln -s {victim_dir} data; ln -s {victim_dir} deep; exit 1; fi; "
        "cat in.txt data/planted.conf deep/er/x.txt"
    )
    spec = job(
        {
            "retries": 1,
            "inputs": [
                {"from": f"file://{remote}/input.txt", "path": "in.txt"},
                {"from": f"file://{remote}/tree/", "path": "data/"},
                {"from": f"file://{remote}/input.txt", "path": "deep/er/x.txt"},
            ],
            "command": first,
        }
    )
    async with Runtime(state_dir) as rt:
        j = await rt.submit(spec)
        await j.wait_for_success()
        [inst] = (await j.get_task_result("t")).instances or []
    assert inst.attempts == 2
    assert victim.read_text() == "untouched" and list(victim_dir.iterdir()) == []
