"""`r2m serve`: run the service. Flags override `R2M_*` environment variables."""

from __future__ import annotations

import argparse
import json
import os
import sys

from r2m_service.api_keys import KeyRing
from r2m_service.cli_keys import add_keys_parser, run_keys
from r2m_service.logging_setup import configure_logging
from r2m_service.settings import Settings


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the HTTP service",
                           description="Serve a reward-model backbone with per-run R2M modules.")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = _flag_type(field.annotation)
        serve.add_argument(flag, type=kind, default=None, dest=name,
                           help=f"{field.description or ''} (env R2M_{name.upper()}; "
                                f"default: {field.default})")


def _flag_type(annotation: object) -> type:
    text = str(annotation)
    if "int" in text and "str" not in text:
        return int
    if "float" in text:
        return float
    return str


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="r2m", description="r2m reward-model service")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    sub.add_parser("openapi", help="print the OpenAPI document (proto/openapi.json)")
    add_keys_parser(sub)
    bench = sub.add_parser("bench", help="run benchmarks: JSON results and a table (r2m_bench)")
    bench.add_argument("name", nargs="?", default="all", help="a benchmark, or all (default)")
    bench.add_argument("--quick", action="store_true", help="CI mode: small and fast")
    bench.add_argument("--out", default=None, help="results directory (default bench/results)")
    args = parser.parse_args(argv)
    if args.command == "bench":  # lazily: the benchmarks need the service extra and more
        from r2m_bench.cli import main as bench_main

        return bench_main([args.name, *["--quick"] * args.quick,
                           *(["--out", args.out] if args.out else [])])
    if args.command == "keys":
        return run_keys(args)
    if args.command == "openapi":
        return print_openapi()
    overrides = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    return serve(Settings(**overrides))


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
    except ImportError as exc:  # the base install is the client only
        print(f"r2m serve needs the service extra: pip install 'r2m[service]' ({exc})",
              file=sys.stderr)
        return 2
    try:
        resolve_backbone_path(settings.backbone)
    except FileNotFoundError as exc:
        print(f"r2m serve: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level=settings.log_level.lower(), timeout_graceful_shutdown=30,
                log_config=None, access_log=False)  # logging_setup and the request middleware
    return 0


if __name__ == "__main__":
    sys.exit(main())
