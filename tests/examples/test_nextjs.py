"""The Next.js example (examples/nextjs): type-checked against the exact TypeScript, Next.js and
`standardwebhooks` its package-lock.json pins, and its sender run against the real stack.

Needs Node.js and npm; without them these tests skip and say so. node_modules is installed
once per package-lock.json (a stamp in it records which) and kept, ignored by git.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.examples.test_senders import EXAMPLES, patches, sender_env
from tests.fixtures.stack import Stack, wait_for

NEXTJS = EXAMPLES / "nextjs"
NODE = shutil.which("node")
NPM = shutil.which("npm")

pytestmark = pytest.mark.skipif(
    NODE is None or NPM is None,
    reason="examples/nextjs is checked with Node.js and npm, and node or npm is not on PATH "
    "here (install nodejs and npm to run these tests)",
)


def run(*args: str, timeout: float, env: dict[str, str] | None = None) -> str:
    """Run a command in examples/nextjs; fail the test with its output if it fails."""
    result = subprocess.run(
        args, cwd=NEXTJS, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result.stdout


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """examples/nextjs/node_modules as the lock file pins it (`npm ci` only when it changed)."""
    digest = hashlib.sha256((NEXTJS / "package-lock.json").read_bytes()).hexdigest()
    stamp = NEXTJS / "node_modules" / ".recur-sync-lock-sha256"
    lock_path = Path(tempfile.gettempdir()) / (
        "recur-sync-npm-" + hashlib.sha256(str(NEXTJS).encode()).hexdigest()[:16] + ".lock"
    )
    # pytest-xdist workers (and other checkouts' runs) must not install into it at once.
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists() or stamp.read_text() != digest:
            assert NPM is not None
            # Optional packages are native builds (the SWC compiler, image tools) tsc does not need.
            run(
                NPM,
                "ci",
                "--ignore-scripts",
                "--omit=optional",
                "--no-audit",
                "--no-fund",
                timeout=600,
            )
            stamp.write_text(digest)
    return NEXTJS / "node_modules"


def test_the_nextjs_example_type_checks(node_modules: Path) -> None:
    run(str(node_modules / ".bin" / "tsc"), "--noEmit", "-p", ".", timeout=300)


def test_the_nextjs_sender_reaches_recur(node_modules: Path, stack: Stack) -> None:
    stack.sandbox.control.create_customer("next@example.tw", external_id="user_4", name="Old")
    # Compiled under examples/nextjs (in .build, ignored by git) so that node finds node_modules.
    build = NEXTJS / ".build"
    build.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=build) as out:
        run(str(node_modules / ".bin" / "tsc"), "--outDir", out,
            "--module", "nodenext", "--moduleResolution", "nodenext", "--target", "ES2022",
            "--lib", "ES2022,DOM", "--types", "node", "--strict", "--skipLibCheck",
            "lib/recur-sync.ts", timeout=300)  # fmt: skip
        driver = """
            const sync = require(process.env.RECUR_SYNC_MODULE);
            const event = sync.userUpdated(
              "user_4",
              { name: "Next 王", email: "next@example.tw", metadata: { plan: "pro" } },
              new Date("2026-11-24T10:00:00Z"),
            );
            sync.sendEvent(event).then(
              (answer) => console.log(JSON.stringify(answer)),
              (error) => { console.error(String(error)); process.exit(1); },
            );
        """
        assert NODE is not None
        env = sender_env(stack, RECUR_SYNC_MODULE=os.path.join(out, "recur-sync.js"))
        answer = json.loads(run(NODE, "-e", driver, timeout=60, env=env))
    assert answer["status"] == "accepted"
    assert answer["event_id"].startswith("evt_")
    wait_for(lambda: patches(stack, "user_4"))
    assert patches(stack, "user_4") == [{"name": "Next 王", "metadata": {"plan": "pro"}}]
