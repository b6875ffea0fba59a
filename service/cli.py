"""`r2m serve`: run the service. Flags override `R2M_*` environment variables."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import ValidationError

from r2m_service.api_keys import KeyRing
from r2m_service.cli_keys import add_keys_parser, run_keys
from r2m_service.logging_setup import configure_logging
from r2m_service.settings import Settings


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the HTTP service",
                           description="Serve a reward-model backbone with per-run R2M modules.")
    for name, field in Settings.model_fields.items():
        serve.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                           help=f"{field.description or ''} (env R2M_{name.upper()}; "
                                f"default: {field.default})",
                           **_flag_options(field.annotation))


def _flag_options(annotation: Any) -> dict[str, Any]:
    """argparse options for a settings field, from its real type: `X | None` is X, a Literal
    gives choices, a bool gives `--flag/--no-flag`. Pydantic validates the value afterwards, so
    bounds and messages are the settings model's own."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        annotation = args[0]
    if get_origin(annotation) is Literal:
        return {"choices": list(get_args(annotation))}
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if annotation in (int, float, str):
        return {"type": annotation}
    raise TypeError(f"no command-line flag type for settings annotation {annotation!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="r2m", description="r2m reward-model service")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    sub.add_parser("openapi", help="print the OpenAPI document (proto/openapi.json)")
    add_keys_parser(sub)
    sub.add_parser("bench", add_help=False,
                   help="run benchmarks: JSON results and a table (`r2m bench --help`)")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # every flag is the benchmarks' own (r2m_bench.cli)
        from r2m_bench.cli import main as bench_main  # lazily: it needs the service extra

        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "keys":
        return run_keys(args)
    if args.command == "openapi":
        return print_openapi()
    overrides = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            flag = "--" + "-".join(str(p) for p in error["loc"]).replace("_", "-")
            print(f"r2m serve: {flag}: {error['msg']}", file=sys.stderr)
        return 2
    return serve(settings)


def print_openapi() -> int:
    from r2m_service.http.app import create_app

    print(json.dumps(create_app().openapi(), indent=2, sort_keys=True))
    return 0


def serve(settings: Settings) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download weights at run time
    configure_logging(settings.log_level, settings.log_format)
    try:  # a bad key file fails here, in a second, not after the backbone imports
        KeyRing.from_settings(settings)
    except (OSError, ValueError) as exc:
        print(f"r2m serve: API keys: {exc}", file=sys.stderr)
        return 2
    try:
        import uvicorn

        from r2m_service.backbone import resolve_backbone_path
        from r2m_service.http.app import create_app
        from r2m_service.http.drain import DrainingServer
    except ImportError as exc:  # the base install is the client only
        print(f"r2m serve needs the service extra: pip install 'r2m[service]' ({exc})",
              file=sys.stderr)
        return 2
    try:
        resolve_backbone_path(settings.backbone)
    except FileNotFoundError as exc:
        print(f"r2m serve: {exc}", file=sys.stderr)
        return 2
    try:  # bind before anything loads: a busy port fails in a second, not after the model
        listener = _bind(settings.host, settings.port)
    except OSError as exc:
        print(f"r2m serve: cannot listen on {settings.host}:{settings.port}: {exc.strerror}",
              file=sys.stderr)
        return 2
    app = create_app(settings)
    config = uvicorn.Config(app, log_level=settings.log_level,
                            timeout_graceful_shutdown=30, log_config=None,
                            access_log=False)  # logging_setup and the request middleware
    DrainingServer(config, app.state, settings.drain_s).run(sockets=[listener])
    return 0


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, as uvicorn would make it (it serves on this one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError:
        listener.close()
        raise
    listener.set_inheritable(True)
    return listener


if __name__ == "__main__":
    sys.exit(main())
