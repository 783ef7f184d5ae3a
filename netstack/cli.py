"""The `netstack` command: `run` starts the stack, `check-config` validates, `stats` reports,
`ss` lists TCP connections (like `ss -ti`),
`soak` runs a long mixed load against a stack in its own namespace (netstack/soak/).

Flag names and defaults are a contract other tools rely on; they come from config.SETTINGS.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from netstack import __version__, stats
from netstack.config import SETTINGS, Config, ConfigError, build_config, load_toml
from netstack.soak import runner as soak

log = logging.getLogger("netstack")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netstack", description="A user-space TCP/IP stack on a TAP device."
    )
    parser.add_argument("--version", action="version", version=f"netstack {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run the stack (default: create tap0, answer as 192.0.2.2)"
    )
    run.add_argument("--config", type=Path, help="TOML config file (flags override it)")
    for setting in SETTINGS:
        if setting.cli:
            default = "none" if setting.default is None else setting.default
            run.add_argument(
                setting.flag,
                dest=setting.attr,
                default=argparse.SUPPRESS,
                metavar=setting.attr.split("_")[-1].upper(),
                help=f"{setting.help} (default: {default})",
            )

    run.add_argument(
        "--forward",
        dest="forward_flags",
        action="append",
        default=[],
        metavar="PROTO:PORT=HOST:PORT",
        help="forward the stack's PROTO port to a kernel socket, e.g. tcp:80=127.0.0.1:8080 "
        "(repeatable; adds to the config file's [[forward]] tables)",
    )
    run.add_argument(
        "--socks",
        dest="socks_listen",
        default=argparse.SUPPRESS,
        metavar="HOST:PORT",
        help="serve SOCKS5 on this kernel address, e.g. 127.0.0.1:1080 (default: off)",
    )

    check = commands.add_parser("check-config", help="validate a config file, print the settings")
    check.add_argument("file", type=Path)
    stats.add_parser(commands)
    stats.add_ss_parser(commands)
    soak.add_parser(commands)
    return parser


def _flag_layer(args: argparse.Namespace) -> dict[str, Any]:
    return {s.key: getattr(args, s.attr) for s in SETTINGS if s.cli and hasattr(args, s.attr)}


def _front_flags(args: argparse.Namespace, file_layer: dict[str, Any]) -> dict[str, Any]:
    """--forward adds to the file's forwards (a list, not a value to override); --socks sets
    socks.listen."""
    layer: dict[str, Any] = {}
    flags = getattr(args, "forward_flags", [])
    if flags:
        existing = file_layer.get("forward") or []
        layer["forward"] = [*(existing if isinstance(existing, list) else [existing]), *flags]
    if hasattr(args, "socks_listen"):
        layer["socks.listen"] = args.socks_listen
    return layer


def _load(args: argparse.Namespace) -> Config:
    layers = []
    if args.config is not None:
        layers.append(load_toml(args.config))
    layers.append(_flag_layer(args))
    layers.append(_front_flags(args, layers[0] if args.config is not None else {}))
    source = str(args.config) if args.config is not None else "command line"
    return build_config(*layers, source=source)


def _run(args: argparse.Namespace) -> int:
    from netstack.logsetup import setup_logging
    from netstack.runtime import Stack, StartupError, open_link

    config = _load(args)
    setup_logging(config.log_level)  # journald-friendly under systemd
    try:
        link = open_link(config)
    except StartupError as err:
        print(f"netstack: {err}", file=sys.stderr)
        return 1
    # SIGHUP re-reads the file (flags still win); without a file there is nothing to reload.
    reload = (lambda: _load(args)) if args.config is not None else None
    try:
        stack = Stack(config, link, reload=reload)
    except StartupError as err:  # the front's listening socket (SOCKS) cannot be had
        link.close()
        print(f"netstack: {err}", file=sys.stderr)
        return 1
    try:
        stack.start_metrics()
    except StartupError as err:
        stack.close()
        print(f"netstack: {err}", file=sys.stderr)
        return 1
    stack.run()
    print(stack.counters.summary(), file=sys.stderr)
    # A link that failed is a failure (Restart=on-failure restarts us); a requested stop is not.
    return 1 if stack.loop.failed_links else 0


def _check_config(args: argparse.Namespace) -> int:
    config = build_config(load_toml(args.file), source=str(args.file))
    print(config.describe())
    return 0


COMMANDS = {"run": _run, "check-config": _check_config, "stats": stats.main, "soak": soak.main}
COMMANDS["ss"] = stats.ss_main  # connections with tcp_info, from the metrics server


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except ConfigError as err:
        print(f"netstack: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
