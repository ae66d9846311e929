"""A spawner whose runtime died still does what the runtime asked before it went, even when
a write to the dead runtime fails before those requests are read: the runtime may have stored
the attempts as starting, and the next runtime adopts them by their journal lines. A real spawner
loop in its own process, a real socket, a real program started."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import run_beside_the_spawner

# The runtime's side: one start request, then the runtime is gone (its end closed). The
# spawner had news for it: that write fails first. Then the spawner's loop runs.
SCENARIO = """
import marshal, os, socket, sys
sys.path.insert(0, sys.argv[1])
import _spawner
work, logs = sys.argv[2], sys.argv[3]
ours, theirs = socket.socketpair()
spawner = _spawner.Spawner(theirs.detach())
key = ["job", "t", "0", "1"]
env = {"PATH": os.environ["PATH"], "AIOBATCH_JOB_ID": "job", "AIOBATCH_TASK_NAME": "t",
       "AIOBATCH_INSTANCE_INDEX": "0", "AIOBATCH_ATTEMPT": "1"}
tag = b'["job","t","0","1"]'
head = ('\\n{"key":["job","t","0","1"],"runtime":"r","spawner":[%d,null]}\\n' % os.getpid())
request = {"op": "spawn", "id": 1, "argv": ["sh", "-c", "echo ran > ran.txt"], "cwd": work,
           "env": env, "stdout": logs + "/0.stdout", "stderr": logs + "/0.stderr",
           "make_logs": False, "journal": logs + "/.attempts", "head": head.encode(), "tag": tag,
           "user": None}
body = marshal.dumps(request)
ours.sendall(len(body).to_bytes(4, "big") + body)
ours.close()
spawner.send({"op": "log_resumed", "key": key, "stream": "stdout", "error": None})
spawner.flush()
assert spawner.orphaned
spawner.run()
"""


def test_requests_sent_before_the_runtime_died_are_done(tmp_path: Path) -> None:
    work, logs = tmp_path / "work", tmp_path / "logs"
    run_beside_the_spawner(SCENARIO, work, logs)
    assert (work / "ran.txt").read_text() == "ran\n"
    lines = [json.loads(line) for line in (logs / ".attempts").read_text().split()]
    assert [line["key"] for line in lines] == [["job", "t", "0", "1"]] * 3
    assert lines[1]["pid"] > 0 and lines[2]["status"] == 0
