"""The `lcore` command: serve, config generate|dump|check|synthesize|migrate, plugins list,
migrate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from lcore_core import __version__
from lcore_core.config import DEFAULT_CONFIG, Config, load_config, validate_document
from lcore_core.config.loader import read_document
from lcore_core.errors import ConfigError
from lcore_core.plugins import Plugins, load_plugins

EXIT_CONFIG = 2
EXIT_STARTUP = 3


def config_arg(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("-c", "--config", required=required,
                        default=os.environ.get("LCORE_CONFIG"),
                        help="lightspeed-stack.yaml (default: $LCORE_CONFIG, else the embedded "
                             "default)")


def build_parser(installed: Plugins | None = None) -> argparse.ArgumentParser:
    """The `lcore` parser; `installed` plugins may add subcommands through `lcore_cli_commands`."""
    parser = argparse.ArgumentParser(prog="lcore", description="LCore: middleware for Llama Stack")
    parser.add_argument("--version", action="version", version=f"lcore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service with Hypercorn")
    config_arg(serve)
    serve.add_argument("--host", help="override service.host")
    serve.add_argument("--port", type=int, help="override service.port")
    serve.add_argument("--workers", type=int, help="override service.workers")

    config = sub.add_parser("config", help="generate, check or show configuration")
    csub = config.add_subparsers(dest="config_command", required=True)
    gen = csub.add_parser("generate", help="print a complete commented default configuration")
    gen.add_argument("-o", "--output", help="write to this file instead of standard output")
    dump = csub.add_parser("dump", help="print the effective configuration, secrets masked")
    config_arg(dump)
    check = csub.add_parser("check", help="validate a configuration file")
    config_arg(check, required=True)
    synth = csub.add_parser(
        "synthesize", help="write the Llama Stack run.yaml a unified configuration describes "
                           "(for `llama stack run` in server mode)")
    config_arg(synth)
    synth.add_argument("-o", "--output",
                       help="where to write it, '-' for standard output (default: run.yaml in "
                            "the state directory, the file library mode uses)")
    migrate = csub.add_parser(
        "migrate", help="turn a legacy pair (lightspeed-stack.yaml + run.yaml) into one unified "
                        "lightspeed-stack.yaml")
    config_arg(migrate, required=True)
    migrate.add_argument("--run-yaml", help="the legacy run.yaml (default: the file "
                                            "llama_stack.library_client_config_path names)")
    migrate.add_argument("-o", "--output", required=True,
                         help="the unified lightspeed-stack.yaml to write (mode 0600)")

    plugins = sub.add_parser("plugins", help="inspect plugins")
    psub = plugins.add_subparsers(dest="plugins_command", required=True)
    plist = psub.add_parser("list", help="installed plugins, their hooks and providers")
    config_arg(plist)
    plist.add_argument("--json", action="store_true", help="machine-readable output")

    migrate = sub.add_parser(
        "migrate", help="import upstream Lightspeed Core Stack's stored data into LCore's stores")
    config_arg(migrate)
    migrate.add_argument("--from-upstream", required=True, metavar="FILE",
                         help="upstream's lightspeed-stack.yaml: its database, "
                              "conversation_cache, quota_handlers and a2a_state sections say "
                              "where the data is")
    migrate.add_argument("--dry-run", action="store_true",
                         help="count what would be imported, write nothing")
    if installed is not None:
        installed.cli_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(_cli_plugins(argv)).parse_args(argv)
    try:
        handler = getattr(args, "handler", None)
        if handler is not None:
            return int(handler(args) or 0)
        if args.command == "serve":
            return serve(args)
        if args.command == "config":
            return {"generate": config_generate, "dump": config_dump,
                    "check": config_check, "synthesize": config_synthesize,
                    "migrate": config_migrate}[args.config_command](args)
        if args.command == "migrate":
            return migrate(args)
        return plugins_list(args)
    except ConfigError as exc:
        print(f"lcore: configuration error:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG


def _cli_plugins(argv: list[str] | None) -> Plugins | None:
    """Installed plugins, for their subcommands; skipped for the core's own commands."""
    words = sys.argv[1:] if argv is None else argv
    first = next((w for w in words if not w.startswith("-")), None)
    if first in ("serve", "config", "plugins", "migrate"):
        return None
    return load_plugins()


def _load(path: str | None) -> tuple[Config, Plugins]:
    from lcore_core.app import _blocked_plugins

    # Parsed once, for the blocked plugins and then for validation.
    document = read_document(path or DEFAULT_CONFIG)
    plugins = load_plugins(blocked=_blocked_plugins(document))
    return validate_document(document, plugins), plugins


def serve(args: argparse.Namespace) -> int:
    from hypercorn.config import Config as HypercornConfig

    from lcore_core.app import create_app, freeze_after_startup, startup_allowance

    config, plugins = _load(args.config)
    service = config.service
    host = args.host or service.host
    port = args.port or service.port
    workers = args.workers or service.workers
    hyper = HypercornConfig()
    hyper.bind = [f"{host}:{port}"]
    hyper.accesslog = None
    # Start-up waits for Llama Stack (llama_stack.max_retries x retry_delay): allow for it.
    hyper.startup_timeout = startup_allowance(config, hyper.startup_timeout)
    tls = service.tls_config
    if tls.tls_certificate_path and tls.tls_key_path:
        hyper.certfile = tls.tls_certificate_path
        hyper.keyfile = tls.tls_key_path
        if tls.tls_key_password:
            # upstream's key: the path of a file holding the key's password
            hyper.keyfile_password = Path(tls.tls_key_password).read_text(encoding="utf-8").strip()
    if workers > 1:
        from hypercorn.run import run

        from lcore_core.metrics import (
            MULTIPROC_ENV,
            prepare_multiprocess_dir,
            remove_multiprocess_dir,
        )

        if args.config:
            os.environ["LCORE_CONFIG"] = str(Path(args.config).resolve())
        hyper.application_path = "lcore_core.asgi:app"
        hyper.workers = workers
        # With several workers Hypercorn ends the open requests itself once the grace period
        # is over (it cancels them).
        hyper.graceful_timeout = service.graceful_shutdown_seconds
        if loop_factory() is not None:
            hyper.worker_class = "uvloop"
        # The workers inherit the environment: each writes its metrics there, /metrics adds up.
        created = prepare_multiprocess_dir(workers)
        print(f"lcore {__version__}: serving on http://{host}:{port} with {workers} workers "
              f"(metrics of all workers in {os.environ[MULTIPROC_ENV]})", file=sys.stderr)
        try:
            return run(hyper)
        finally:
            remove_multiprocess_dir(created)

    # One process cuts them first, cleanly (`_serve_one`): Hypercorn's own cancellation must
    # not come before that cut.
    hyper.graceful_timeout = service.graceful_shutdown_seconds + CUT_S + 1
    app = create_app(config, plugins=plugins)
    freeze_after_startup(app)
    print(f"lcore {__version__}: serving on http://{host}:{port}", file=sys.stderr)
    from hypercorn.utils import LifespanFailureError

    try:
        asyncio.run(_serve_one(app, hyper, service.graceful_shutdown_seconds),
                    loop_factory=loop_factory())
    except LifespanFailureError as exc:
        print(f"lcore: start-up failed: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    return 0


# After the grace period: how long the cut streams get to end at their next event before what
# still runs is cancelled.
CUT_S = 5.0


def loop_factory() -> Any:
    """uvloop's event loop when it is installed (the default on Linux), else asyncio's own.

    `LCORE_EVENT_LOOP=asyncio` keeps asyncio's loop, e.g. for its debug mode.
    """
    if os.environ.get("LCORE_EVENT_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _serve_one(app: Any, hyper: Any, grace: float = 30.0) -> None:
    """Serve until SIGTERM/SIGINT, then let requests in flight finish for `grace` seconds.

    Hypercorn alone would cancel the open requests when its graceful timeout ends, wherever
    they are; here, past the grace period, open streams end at their next event (their quota
    reservations released), and what still runs `CUT_S` later is cancelled. Hypercorn's own
    timeout is set beyond both. The app's shutdown runs either way, so state is flushed and
    connections closed.
    """
    from hypercorn.asyncio import serve as hypercorn_serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = asyncio.ensure_future(hypercorn_serve(app, hyper, shutdown_trigger=stop.wait))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([server, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if server.done():
        server.result()
        return
    print(f"lcore: stopping; requests in flight may finish within {grace:g} s",
          file=sys.stderr)
    done, _ = await asyncio.wait([server], timeout=grace)
    if done:
        server.result()
        return
    print("lcore: grace period over, cutting the requests still open", file=sys.stderr)
    # Streams end cleanly at their next event (reservations released, nothing half-stored);
    # whatever is still running after that is cancelled.
    app.runtime.cutting_streams = True
    done, _ = await asyncio.wait([server], timeout=CUT_S)
    if done:
        server.result()
        return
    server.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await server
    try:
        await app.shutdown()
    except Exception as exc:  # best effort: the process is exiting
        print(f"lcore: shutdown after the grace period failed: {exc}", file=sys.stderr)


def config_generate(args: argparse.Namespace) -> int:
    text = (Path(__file__).parent / "data" / "lightspeed-stack.full.yaml").read_text()
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def config_dump(args: argparse.Namespace) -> int:
    config, _ = _load(args.config)
    json.dump(config.masked(), sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
    return 0


def config_check(args: argparse.Namespace) -> int:
    config, _ = _load(args.config)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.config}: OK (authentication: {config.authentication.module}, "
          f"conversation cache: {config.conversation_cache.type})")
    return 0


def migrate(args: argparse.Namespace) -> int:
    from lcore_core.migrate.command import run

    target, plugins = _load(args.config)
    # Upstream's file is read with the same plugins: LCore accepts upstream's configuration.
    source = validate_document(read_document(args.from_upstream), plugins)
    return run(source, target, plugins, dry_run=args.dry_run)


def config_synthesize(args: argparse.Namespace) -> int:
    from lcore_core import llama_config

    config, _ = _load(args.config)
    if config.llama_stack.library_client_config_path is not None:
        raise ConfigError("the configuration names its own run.yaml (legacy mode): there is "
                          "nothing to build; `lcore config migrate` makes it unified",
                          file=config.source, key="llama_stack.library_client_config_path")
    if args.output == "-":
        source = config.source
        base = Path(source).resolve().parent if not source.startswith("<") else None
        sys.stdout.write(llama_config.dump_yaml(llama_config.synthesize(config, base_dir=base)))
        return 0
    path = llama_config.synthesize_to_file(config, Path(args.output) if args.output else None)
    print(f"wrote {path} (mode 0600); start it with: llama stack run {path}", file=sys.stderr)
    return 0


def config_migrate(args: argparse.Namespace) -> int:
    from lcore_core.config.unify import unify

    path = unify(Path(args.config), Path(args.run_yaml) if args.run_yaml else None,
                   Path(args.output))
    print(f"wrote {path} (mode 0600); check it with: lcore config check -c {path}",
          file=sys.stderr)
    return 0


def plugins_list(args: argparse.Namespace) -> int:
    from lcore_core.app import _blocked_plugins

    plugins = load_plugins(blocked=_blocked_plugins(args.config))
    selected: dict[str, str] = {}
    config_error = None
    try:
        config = load_config(args.config, plugins)
        selected = {"auth provider": config.authentication.module,
                    "cache backend": config.conversation_cache.type}
    except ConfigError as exc:
        config_error = str(exc)
    providers: dict[str, dict[str, Any]] = {
        "auth provider": plugins.auth_providers(),
        "cache backend": plugins.cache_backends(),
        "config section": plugins.config_sections(),
    }
    rows: list[dict[str, Any]] = []
    for info in plugins.describe():
        provided = [
            {"kind": kind, "name": name, "selected": selected.get(kind) == name}
            for kind, entries in providers.items() for name in entries
            if plugins.owner(kind, name) == info.name
        ]
        rows.append({"name": info.name, "distribution": info.distribution,
                     "version": info.version, "hooks": info.hooks, "provides": provided,
                     "error": info.error})
    if args.json:
        json.dump({"plugins": rows, "config_error": config_error}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for row in rows:
            status = f"  FAILED: {row['error']}" if row["error"] else ""
            print(f"{row['name']}  ({row['distribution']} {row['version']}){status}")
            if row["hooks"]:
                print(f"    hooks: {', '.join(row['hooks'])}")
            for p in row["provides"]:
                mark = "  [selected]" if p["selected"] else ""
                print(f"    {p['kind']}: {p['name']}{mark}")
        if config_error:
            print(f"\nconfiguration error (selection unknown):\n{config_error}")
    failed = any(r["error"] for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
