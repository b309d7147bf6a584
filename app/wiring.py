"""The modules whose ``@job`` tasks make up the queue, imported by ``create_app`` and ``corpora worker``."""

from __future__ import annotations

import importlib

TASK_MODULES: list[str] = [
    "app.notifications.tasks",
    "licensing.notices",
    "licensing.sweeps",
    "licensing.takedowns.tasks",
    "catalog.inspection.tasks",
]


def load_tasks() -> None:
    for module in TASK_MODULES:
        importlib.import_module(module)
