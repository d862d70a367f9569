"""The core tests' fixtures (`write_config`, `make_app`, `serving`), reused for this plugin."""

from tests.core.conftest import make_app, serving, stack_url, write_config

__all__ = ["make_app", "serving", "stack_url", "write_config"]
