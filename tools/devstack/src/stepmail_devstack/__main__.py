"""``stepmail-dev``: run the platform locally with embedded Postgres, broker and SMTP catcher."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from stepmail_devstack.processes import DevstackError
from stepmail_devstack.runner import DevPorts, Devstack, find_repo_root
from stepmail_devstack.services import SERVICE_NAMES, SERVICE_PORTS


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"{what} must look like NAME=VALUE, got {item!r}")
        pairs[name] = value
    return pairs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stepmail-dev", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="start everything and stay in the foreground until Ctrl-C",
        description="Ports default to STEPMAIL_DEV_<NAME>_PORT when set.",
    )
    run.add_argument("--pg-port", type=int, default=_env_int("STEPMAIL_DEV_PG_PORT", 5432))
    run.add_argument("--kafka-port", type=int, default=_env_int("STEPMAIL_DEV_KAFKA_PORT", 9092))
    run.add_argument("--smtp-port", type=int, default=_env_int("STEPMAIL_DEV_SMTP_PORT", 1025))
    run.add_argument(
        "--mail-http-port", type=int, default=_env_int("STEPMAIL_DEV_MAIL_HTTP_PORT", 8025)
    )
    run.add_argument(
        "--services",
        default=",".join(SERVICE_NAMES),
        help="comma-separated services to start (empty: none)",
    )
    run.add_argument(
        "--service-port",
        action="append",
        default=[],
        metavar="NAME=PORT",
        help="listen port of a service (default 8001-8005)",
    )
    run.add_argument(
        "--service-module",
        action="append",
        default=[],
        metavar="NAME=MODULE",
        help="run 'python -m MODULE' for service NAME instead of stepmail_NAME",
    )
    run.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where Postgres data, caught mail and logs live (default <repo>/.devstack)",
    )
    run.add_argument("--quiet", action="store_true", help="do not echo child output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        repo_root = find_repo_root()
    except DevstackError as exc:
        print(f"stepmail-dev: {exc}", file=sys.stderr)
        return 2
    names = [name.strip() for name in args.services.split(",") if name.strip()]
    service_ports = dict(SERVICE_PORTS)
    for name in SERVICE_NAMES:
        service_ports[name] = _env_int(f"STEPMAIL_DEV_{name.upper()}_PORT", service_ports[name])
    service_ports |= {k: int(v) for k, v in _pairs(args.service_port, "--service-port").items()}
    modules = _pairs(args.service_module, "--service-module")
    missing = [name for name in names if name not in service_ports]
    if missing:
        print(f"stepmail-dev: no port for {', '.join(missing)}", file=sys.stderr)
        return 2
    ports = DevPorts(
        postgres=args.pg_port,
        broker=args.kafka_port,
        smtp=args.smtp_port,
        mail_http=args.mail_http_port,
        services=service_ports,
    )
    stack = Devstack(
        repo_root,
        (args.state_dir or repo_root / ".devstack").resolve(),
        ports,
        services=names,
        service_argv={name: [sys.executable, "-m", module] for name, module in modules.items()},
        echo=not args.quiet,
    )
    return stack.run()


if __name__ == "__main__":
    sys.exit(main())
