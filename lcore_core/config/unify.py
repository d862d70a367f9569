"""`lcore config migrate`: a legacy pair (lightspeed-stack.yaml naming a run.yaml) made one
unified file (upstream's `--migrate-config`; `lcore migrate` imports upstream's stored data).

The run.yaml moves as it is into `llama_stack.config.native_override` over an empty baseline,
so the run configuration LCore builds from the result is the original run.yaml again. The rest
of lightspeed-stack.yaml, comments included, is kept.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from lcore_core.errors import ConfigError
from lcore_core.llama_config import write_private


def _load(path: Path, yaml: YAML) -> Any:
    try:
        return yaml.load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", file=str(path)) from None
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"invalid YAML: {getattr(exc, 'problem', exc)}", file=str(path),
                          line=mark.line + 1 if mark is not None else None) from None


def _line(mapping: CommentedMap, key: str) -> int | None:
    try:
        return int(mapping.lc.key(key)[0]) + 1
    except (KeyError, TypeError, AttributeError):
        return None


def unify(config_path: Path, run_yaml: Path | None, output: Path) -> Path:
    """Write the unified form of `config_path` (+ `run_yaml`, default: the run.yaml it names)
    to `output`, mode 0600 (the run.yaml may hold literal secrets); return the path."""
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    source = str(config_path)
    data = _load(config_path, yaml)
    if not isinstance(data, CommentedMap):
        raise ConfigError("the top level must be a mapping of sections", file=source, line=1)
    name = next((k for k in ("llama_stack", "ogx") if k in data), None)
    if name is None or not isinstance(data[name], CommentedMap):
        raise ConfigError("no llama_stack section to migrate", file=source, key="llama_stack")
    section = data[name]
    if "config" in section:
        raise ConfigError("already unified: llama_stack.config is set", file=source,
                          line=_line(section, "config"), key=f"{name}.config")
    named = section.get("library_client_config_path")
    if run_yaml is None:
        if not named or "${" in str(named):
            raise ConfigError("give --run-yaml: the configuration names no run.yaml file "
                              "(library_client_config_path)", file=source,
                              line=_line(data, name), key=f"{name}.library_client_config_path")
        run_yaml = Path(str(named)).expanduser()
        beside = config_path.resolve().parent / run_yaml
        if not run_yaml.is_absolute() and not run_yaml.exists() and beside.exists():
            run_yaml = beside
    run = _load(run_yaml, yaml)
    if not isinstance(run, CommentedMap):
        raise ConfigError("a run configuration must be a mapping", file=str(run_yaml), line=1)
    section.pop("library_client_config_path", None)
    unified = CommentedMap()
    unified["baseline"] = "empty"
    unified["native_override"] = run
    section["config"] = unified
    out = io.StringIO()
    yaml.dump(data, out)
    return write_private(output, out.getvalue())
