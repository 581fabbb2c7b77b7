"""Docker does not run here, so the deployment files are checked against the code they deploy:
the Procfile, docker-compose.yml, the Dockerfile, .env.example and the README's settings table.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from sync_worker.cli import app as cli_app
from sync_worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = [name.upper() for name in Settings.model_fields]
SECRETS = {"RECUR_SECRET_KEY", "WEBHOOK_SECRET", "ADMIN_TOKEN"}
APP_SERVICES = ("web", "worker", "beat")
HINT = "document every setting in .env.example and in README.md's configuration table"


def procfile() -> dict[str, list[str]]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    entries = [line.split(":", 1) for line in lines if line.strip()]
    return {name.strip(): shlex.split(command) for name, command in entries}


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def env_example() -> tuple[dict[str, str], set[str]]:
    """The assignments of .env.example, and the names that appear only commented out."""
    values: dict[str, str] = {}
    commented: set[str] = set()
    for line in (ROOT / ".env.example").read_text().splitlines():
        if match := re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line):
            values[match[1]] = match[2]
        elif match := re.fullmatch(r"# ([A-Z][A-Z0-9_]*)=.*", line):
            commented.add(match[1])
    return values, commented


def test_the_procfile_runs_web_worker_and_beat_with_existing_commands() -> None:
    processes = procfile()
    assert processes == {
        "web": ["sync-worker", "web", "--host", "0.0.0.0", "--port", "$PORT"],  # noqa: S104
        "worker": ["sync-worker", "worker"],
        "beat": ["sync-worker", "beat"],
    }
    registered = {command.name for command in cli_app.registered_commands}
    assert {argv[1] for argv in processes.values()} <= registered


def test_compose_runs_the_procfile_processes_on_one_redis() -> None:
    services = compose()["services"]
    assert {"redis", *APP_SERVICES, "flower"} <= set(services)
    for name, argv in procfile().items():
        service = services[name]
        # Compose gives web its port through WEB_PORT; a Procfile platform through $PORT.
        expected = argv[: argv.index("--port")] if "--port" in argv else argv
        assert service["command"] == expected, name
        assert service["build"] == "."
        assert service["env_file"] == ".env"
        assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "profiles" not in service
    web = services["web"]
    assert web["ports"] == [f"${{WEB_PORT:-8000}}:{web['environment']['WEB_PORT']}"]


def test_compose_environment_names_only_real_settings() -> None:
    for name, service in compose()["services"].items():
        unknown = set(service.get("environment", {})) - set(SETTINGS)
        assert not unknown, f"{name} sets {unknown}, which no setting reads"


def test_compose_redis_keeps_every_accepted_event() -> None:
    document = compose()
    redis = document["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    # The README promises a 202 is never lost: fsync before the answer, not once a second.
    assert command[command.index("--appendfsync") + 1] == "always"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    volume, _, mount = redis["volumes"][0].partition(":")
    assert mount == "/data"
    assert volume in document["volumes"]


def test_ci_sets_ci_so_browser_and_promtool_tests_cannot_skip() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^export CI=true$", script, re.MULTILINE)
    assert script.index("export CI=true") < script.index("make test")


def test_flower_is_optional_and_runs_against_the_celery_app() -> None:
    flower = compose()["services"]["flower"]
    assert flower["profiles"] == ["flower"]
    script = " ".join(flower["command"])
    assert "pip install" in script
    assert "celery -A sync_worker.celery_app flower" in script


def test_the_image_is_slim_non_root_and_without_dev_dependencies() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    install = next(line for line in instructions if "pip install" in line)
    assert "[dev]" not in install
    user = next(line for line in instructions if line.startswith("USER "))
    assert user.split()[1] not in {"root", "0"}
    assert instructions.index(user) > instructions.index(install)


def test_env_example_documents_every_setting() -> None:
    values, commented = env_example()
    missing = [name for name in SETTINGS if name not in values and name not in commented]
    assert not missing, f"{missing} missing from .env.example: {HINT}"
    assert set(values) <= set(SETTINGS), "a value in .env.example that no setting reads"
    assert commented >= SECRETS, "secrets have no default: keep them commented out"


def test_env_example_as_dotenv_gives_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    dotenv = tmp_path / ".env"
    dotenv.write_text((ROOT / ".env.example").read_text())
    from_example = Settings(_env_file=dotenv)  # type: ignore[call-arg]
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert from_example.model_dump() == defaults.model_dump()


def test_readme_configuration_table_lists_every_setting_with_its_default() -> None:
    values, _ = env_example()
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        if match := re.match(r"\| `([A-Z][A-Z0-9_]*)` \| ([^|]*) \|", line):
            rows[match[1]] = match[2].strip()
    missing = [name for name in SETTINGS if name not in rows]
    assert not missing, f"{missing} missing from README.md: {HINT}"
    for name in SETTINGS:
        expected = f"`{values[name]}`" if name in values else "(none)"
        assert rows[name] == expected, name


def test_readme_names_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme
    assert "make test" in readme


def test_make_run_installs_only_what_running_needs() -> None:
    makefile = (ROOT / "Makefile").read_text()
    run_prerequisites = re.search(r"^run: (.+)$", makefile, re.M)
    assert run_prerequisites is not None
    assert run_prerequisites[1].strip() == "$(RUN_STAMP)"
    assert "pip install -q -e '.[run]'" in makefile
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    run_only = " ".join(extras["run"])
    for tool in ("pytest", "mypy", "ruff", "selenium", "hypothesis"):
        assert tool not in run_only, tool
        assert any(requirement.startswith(tool) for requirement in extras["dev"]), tool
