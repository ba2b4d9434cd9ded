"""``stepmail apply|validate -f DIR``, ``stepmail timeline`` and ``stepmail dlq list|replay``.

``dlq`` talks to the broker (see ``stepmail_cli.dlq``); the rest to the services' APIs.

DIR is walked in name order:

- a directory holding ``template.yaml`` is a template (its id is the directory's name;
  ``body.html.j2`` and ``body.txt.j2`` beside it) → the renderer's template API;
- ``layouts/*.j2`` (outside template directories) are shared layouts and partials →
  the renderer's layout API;
- a ``*.yaml``/``*.yml`` file with a top-level ``trigger`` is a scenario → the
  orchestrator's ``PUT /v1/scenarios/{id}``.

Layouts go first, then templates, then scenarios (which name templates). ``validate``
sends everything to the validate-only endpoints and saves nothing. Every problem is
printed as ``FILE: FIELD: what is wrong``; the exit code is 1 when there was one, 2 for
bad usage.
"""

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
import yaml

from stepmail_cli import dlq

DEFAULT_RENDERER_URL = "http://127.0.0.1:8003"
DEFAULT_ORCHESTRATOR_URL = "http://127.0.0.1:8002"
DEV_ADMIN_TOKEN = "dev-admin-token"  # noqa: S105 - the development default of the services
TEMPLATE_FILE = "template.yaml"
HTML_FILE = "body.html.j2"
TEXT_FILE = "body.txt.j2"
LAYOUTS_DIR = "layouts"
# Where the renderer's field names live among a template's files.
_TEMPLATE_FIELD_FILES = {"html": HTML_FILE, "text": TEXT_FILE}


@dataclass
class Template:
    id: str
    directory: Path
    body: dict[str, Any]

    def file_for(self, field_name: str) -> Path:
        return self.directory / _TEMPLATE_FIELD_FILES.get(field_name, TEMPLATE_FILE)


@dataclass
class Layout:
    name: str
    path: Path
    source: str


@dataclass
class Scenario:
    id: str
    path: Path
    body: dict[str, Any]


@dataclass
class Found:
    """What a directory holds, and what could not even be read."""

    layouts: list[Layout] = field(default_factory=list)
    templates: list[Template] = field(default_factory=list)
    scenarios: list[Scenario] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8").replace("\r\n", "\n")


def _load_yaml(path: Path, found: Found) -> Any:
    try:
        return yaml.safe_load(_read(path))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        found.problems.append(f"{path}: yaml: {' '.join(str(exc).split())}")
        return None


def _template(directory: Path, found: Found) -> None:
    meta_path = directory / TEMPLATE_FILE
    meta = _load_yaml(meta_path, found)
    if meta is None and not found.problems:
        meta = {}
    if not isinstance(meta, dict):
        if meta is not None:
            found.problems.append(f"{meta_path}: -: expected a mapping")
        return
    html_path = directory / HTML_FILE
    if not html_path.is_file():
        found.problems.append(f"{html_path}: html: missing")
        return
    body = {**meta, "html": _read(html_path)}
    text_path = directory / TEXT_FILE
    if text_path.is_file():
        body["text"] = _read(text_path)
    found.templates.append(Template(directory.name, directory, body))


def _scenario(path: Path, found: Found) -> None:
    doc = _load_yaml(path, found)
    if not isinstance(doc, dict) or "trigger" not in doc:
        return
    scenario_id = doc.get("id") or path.stem
    found.scenarios.append(Scenario(str(scenario_id), path, doc))


def discover(root: Path) -> Found:
    """The layouts, templates and scenarios under ``root`` (a directory or one file)."""
    found = Found()
    if root.is_file():
        if root.name == TEMPLATE_FILE:
            _template(root.parent, found)
        elif root.suffix in (".yaml", ".yml"):
            _scenario(root, found)
        return found
    if (root / TEMPLATE_FILE).is_file():
        _template(root, found)
        return found
    for path in sorted(root.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            if (path / TEMPLATE_FILE).is_file():
                _template(path, found)
            elif path.name == LAYOUTS_DIR:
                for layout in sorted(path.glob("*.j2")):
                    name = f"{LAYOUTS_DIR}/{layout.name}"
                    found.layouts.append(Layout(name, layout, _read(layout)))
            else:
                sub = discover(path)
                found.layouts += sub.layouts
                found.templates += sub.templates
                found.scenarios += sub.scenarios
                found.problems += sub.problems
        elif path.suffix in (".yaml", ".yml") and path.name != "senders.yaml":
            _scenario(path, found)
    return found


class Client:
    """Talks to the renderer and the orchestrator; prints every outcome."""

    def __init__(
        self,
        http: httpx.Client,
        renderer_url: str,
        orchestrator_url: str,
        out: TextIO,
    ) -> None:
        self._http = http
        self._renderer = renderer_url.rstrip("/")
        self._orchestrator = orchestrator_url.rstrip("/")
        self._out = out
        self.failed = False

    def _problem(self, where: Path, response: httpx.Response, file_for: Any = None) -> None:
        self.failed = True
        try:
            doc = response.json()
        except ValueError:
            doc = {}
        errors = doc.get("errors") if isinstance(doc, dict) else None
        if response.status_code == 401:
            print(
                f"{where}: -: unauthorized: set STEPMAIL_ADMIN_TOKEN (or --token)", file=self._out
            )
            return
        if isinstance(errors, list) and errors:
            for error in errors:
                name = str(error.get("field", "-"))
                path = file_for(name) if file_for else where
                print(f"{path}: {name}: {error.get('detail', 'invalid')}", file=self._out)
            return
        title = doc.get("detail") or doc.get("title") if isinstance(doc, dict) else None
        print(
            f"{where}: -: HTTP {response.status_code}: {title or response.text[:200]}",
            file=self._out,
        )

    def _send(
        self, method: str, url: str, body: dict[str, Any], where: Path, file_for: Any = None
    ) -> dict[str, Any] | None:
        try:
            response = self._http.request(method, url, json=body)
        except httpx.HTTPError as exc:
            self.failed = True
            print(f"{where}: -: cannot reach {url}: {exc.__class__.__name__}", file=self._out)
            return None
        if response.status_code >= 300:
            self._problem(where, response, file_for)
            return None
        result: dict[str, Any] = response.json()
        return result

    def _applied(self, where: Path, kind: str, result: dict[str, Any] | None) -> None:
        if result is not None:
            state = "created" if result.get("created") else "unchanged"
            print(
                f"{where}: {kind} {result.get('id')} v{result.get('version')} {state}",
                file=self._out,
            )

    def apply(self, found: Found) -> None:
        for layout in found.layouts:
            file = layout.name.removeprefix(f"{LAYOUTS_DIR}/")
            url = f"{self._renderer}/v1/layouts/{file}"
            self._applied(
                layout.path,
                "layout",
                self._send("PUT", url, {"source": layout.source}, layout.path),
            )
        for t in found.templates:
            url = f"{self._renderer}/v1/templates/{t.id}"
            result = self._send("PUT", url, t.body, t.directory, t.file_for)
            self._applied(t.directory, "template", result)
        for s in found.scenarios:
            url = f"{self._orchestrator}/v1/scenarios/{s.id}"
            self._applied(s.path, "scenario", self._send("PUT", url, s.body, s.path))

    def validate(self, found: Found) -> None:
        layouts = {layout.name: layout.source for layout in found.layouts}
        for layout in found.layouts:
            body = {"name": layout.name, "source": layout.source, "layouts": layouts}
            if self._send("POST", f"{self._renderer}/v1/layouts:validate", body, layout.path):
                print(f"{layout.path}: valid", file=self._out)
        for t in found.templates:
            body = {**t.body, "id": t.id, "layouts": layouts}
            url = f"{self._renderer}/v1/templates:validate"
            if self._send("POST", url, body, t.directory, t.file_for):
                print(f"{t.directory}: valid", file=self._out)
        for s in found.scenarios:
            url = f"{self._orchestrator}/v1/scenarios:validate"
            if self._send("POST", url, s.body, s.path) is not None:
                print(f"{s.path}: valid", file=self._out)


def _add_connection(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--renderer-url", default=os.environ.get("RENDERER_URL", DEFAULT_RENDERER_URL)
    )
    command.add_argument(
        "--orchestrator-url",
        default=os.environ.get("ORCHESTRATOR_URL", DEFAULT_ORCHESTRATOR_URL),
    )
    command.add_argument(
        "--token",
        default=os.environ.get("STEPMAIL_ADMIN_TOKEN", DEV_ADMIN_TOKEN),
        help="admin bearer token (default: $STEPMAIL_ADMIN_TOKEN)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stepmail", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    timeline = commands.add_parser(
        "timeline", help="dry run: which mails a scenario would send a contact, and when"
    )
    timeline.add_argument("scenario")
    who = timeline.add_mutually_exclusive_group(required=True)
    who.add_argument("--contact-id", help="a known contact")
    who.add_argument("--contact", help="a sample contact as JSON")
    timeline.add_argument("--event", required=True, help="the trigger event's name")
    timeline.add_argument(
        "--property", action="append", default=[], metavar="KEY=VALUE", help="event property"
    )
    timeline.add_argument("--start", help="RFC 3339 start time (default: now)")
    timeline.add_argument("--assume-opened", action="store_true")
    timeline.add_argument("--assume-clicked", action="store_true")
    _add_connection(timeline)
    for name, help_text in (
        ("apply", "save every scenario, template and layout under DIR"),
        ("validate", "check them without saving anything"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("-f", "--filename", required=True, type=Path, metavar="DIR")
        _add_connection(command)
    dlq.add_parser(commands)
    return parser


def _timeline(args: argparse.Namespace, http: httpx.Client, out: TextIO) -> int:
    """Print the dry run as a table; problems as ``SCENARIO: FIELD: detail``."""
    body: dict[str, Any] = {
        "event": {
            "name": args.event,
            "properties": dict(p.split("=", 1) for p in args.property if "=" in p),
        },
        "assume": {"opened": args.assume_opened, "clicked": args.assume_clicked},
    }
    if args.contact_id:
        body["contact_id"] = args.contact_id
    else:
        try:
            body["contact"] = json.loads(args.contact)
        except json.JSONDecodeError as exc:
            print(f"{args.scenario}: contact: not JSON: {exc}", file=out)
            return 2
    if args.start:
        body["start"] = args.start
    url = f"{args.orchestrator_url.rstrip('/')}/v1/scenarios/{args.scenario}/timeline"
    response = http.post(url, json=body)
    if response.status_code != 200:
        try:
            problem = response.json()
        except ValueError:
            problem = {"detail": response.text[:200]}
        detail = problem.get("detail") or problem.get("title") or f"HTTP {response.status_code}"
        errors = problem.get("errors") or [{"field": "-", "detail": detail}]
        for error in errors:
            print(f"{args.scenario}: {error.get('field')}: {error.get('detail')}", file=out)
        return 1
    for entry in response.json()["timeline"]:
        what = entry["action"]
        detail = entry.get("template") or entry.get("goto") or entry.get("reason") or ""
        held = " (held)" if entry.get("held") else ""
        print(f"{entry['at']}  {entry.get('step') or '-':<20} {what:<10} {detail}{held}", file=out)
    return 0


def run(
    argv: Sequence[str],
    out: TextIO = sys.stdout,
    transport: httpx.BaseTransport | None = None,
) -> int:
    """The command line's work; ``transport`` lets tests route HTTP in-process."""
    args = _parser().parse_args(argv)
    if args.command == "dlq":
        return dlq.run(args, out)
    headers = {"Authorization": f"Bearer {args.token}"}
    if args.command == "timeline":
        with httpx.Client(headers=headers, timeout=30, transport=transport) as http:
            return _timeline(args, http, out)
    root: Path = args.filename
    if not root.exists():
        print(f"{root}: -: no such file or directory", file=out)
        return 2
    found = discover(root)
    for problem in found.problems:
        print(problem, file=out)
    if not (found.layouts or found.templates or found.scenarios or found.problems):
        print(f"{root}: -: no template, layout or scenario found", file=out)
        return 1
    with httpx.Client(headers=headers, timeout=30, transport=transport) as http:
        client = Client(http, args.renderer_url, args.orchestrator_url, out)
        if args.command == "apply":
            client.apply(found)
        else:
            client.validate(found)
    return 1 if client.failed or found.problems else 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))
