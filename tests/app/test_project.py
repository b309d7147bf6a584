"""The project's own promises: CI runs the README's test command, and the API documents every endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grimp
from litestar.testing import AsyncTestClient

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("```sh")
    end = lines.index("```", start + 1)
    return [line for line in lines[start + 1 : end] if line and not line.startswith("#")]


def test_ci_runs_the_readme_test_command_exactly() -> None:
    serve, test = _readme_commands()
    assert serve.endswith("corpora serve")
    assert test in (ROOT / ".ci" / "run").read_text().splitlines()


async def test_openapi_documents_every_endpoint(client: AsyncTestClient[Any]) -> None:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert operation.get("summary"), f"{method.upper()} {path} has no summary"
    for expected in ["/api/v1/users", "/api/v1/auth/token", "/api/v1/me", "/api/v1/orgs", "/api/v1/orgs/{org}"]:
        assert expected in schema["paths"], expected


def test_no_module_imports_itself_through_others() -> None:
    graph = grimp.build_graph("app", "catalog", "licensing", "client", "demo")
    cycles = [
        (module, imported)
        for module in sorted(graph.modules)
        for imported in sorted(graph.find_modules_directly_imported_by(module))
        if graph.chain_exists(importer=imported, imported=module)
    ]
    assert cycles == []


def test_migrations_are_numbered_without_gaps_and_form_one_line() -> None:
    from alembic.script import ScriptDirectory

    from app.migrate import MIGRATIONS, alembic_config

    numbers = sorted(int(path.name[:4]) for path in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
    assert numbers == list(range(1, len(numbers) + 1))
    scripts = ScriptDirectory.from_config(alembic_config("postgresql://unused/unused"))
    assert len(scripts.get_heads()) == 1
    for revision in scripts.walk_revisions():
        assert revision.path is not None
        assert Path(revision.path).name.startswith(f"{revision.revision}_")
