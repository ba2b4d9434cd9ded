"""``stepmail apply/validate``: what is found in a directory, what is sent, what is printed.

The services are stood in for by an in-process HTTP handler that answers with the
contracts' shapes (200/201 ``{"id","version","created"}``, 422 problem+json).
"""

import io
import json
import shutil
from pathlib import Path

import httpx

from stepmail_cli.main import discover, run

REPO = Path(__file__).resolve().parents[3]


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "mail"
    shutil.copytree(REPO / "examples" / "templates" / "welcome", root / "templates" / "welcome")
    (root / "templates" / "layouts").mkdir()
    (root / "templates" / "layouts" / "base.html.j2").write_text(
        "<html><body>{% block content %}{% endblock %}</body></html>\n", encoding="utf-8"
    )
    (root / "scenarios").mkdir()
    (root / "scenarios" / "welcome.yaml").write_text(
        "id: welcome\ntrigger:\n  event: signup\nsteps: []\n", encoding="utf-8"
    )
    (root / "scenarios" / "notes.yaml").write_text("just: data\n", encoding="utf-8")
    return root


class Recorder:
    def __init__(self, answers: dict[str, httpx.Response] | None = None) -> None:
        self.calls: list[tuple[str, str, dict, str]] = []
        self.answers = answers or {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.calls.append(
            (request.method, str(request.url), body, request.headers.get("authorization", ""))
        )
        for suffix, answer in self.answers.items():
            if str(request.url).endswith(suffix):
                return answer
        return httpx.Response(201, json={"id": "x", "version": 1, "created": True})


def _run(args: list[str], recorder: Recorder, monkeypatch) -> tuple[int, str]:
    monkeypatch.setenv("STEPMAIL_ADMIN_TOKEN", "secret-token-for-tests")
    out = io.StringIO()
    code = run(args, out=out, transport=httpx.MockTransport(recorder))
    return code, out.getvalue()


def test_discover_finds_layouts_templates_and_only_scenarios_with_a_trigger(tmp_path):
    found = discover(_tree(tmp_path))
    assert [layout.name for layout in found.layouts] == ["layouts/base.html.j2"]
    assert [t.id for t in found.templates] == ["welcome"]
    assert found.templates[0].body["html"].startswith("<!DOCTYPE html>")
    assert "text" in found.templates[0].body
    assert [s.id for s in found.scenarios] == ["welcome"]


def test_apply_puts_layouts_then_templates_then_scenarios(tmp_path, monkeypatch):
    recorder = Recorder()
    code, out = _run(
        [
            "apply",
            "-f",
            str(_tree(tmp_path)),
            "--renderer-url",
            "http://r.test",
            "--orchestrator-url",
            "http://o.test/",
        ],
        recorder,
        monkeypatch,
    )
    assert code == 0, out
    assert [(m, u) for m, u, _, _ in recorder.calls] == [
        ("PUT", "http://r.test/v1/layouts/base.html.j2"),
        ("PUT", "http://r.test/v1/templates/welcome"),
        ("PUT", "http://o.test/v1/scenarios/welcome"),
    ]
    assert all(auth == "Bearer secret-token-for-tests" for _, _, _, auth in recorder.calls)
    assert recorder.calls[2][2] == {"id": "welcome", "trigger": {"event": "signup"}, "steps": []}
    assert recorder.calls[1][2]["mail_kind"] == "marketing"
    assert "v1 created" in out


def test_validation_errors_are_printed_per_file_and_field(tmp_path, monkeypatch):
    problem = {
        "type": "urn:stepmail:problem:validation",
        "title": "Template is invalid",
        "status": 422,
        "errors": [{"field": "html", "detail": "line 3: unknown variable contact.nmae"}],
    }
    scenario_problem = {
        "title": "Scenario is invalid",
        "status": 422,
        "errors": [{"field": "steps.0.wait", "detail": "not a duration"}],
    }
    recorder = Recorder(
        {
            "/v1/templates:validate": httpx.Response(422, json=problem),
            "/v1/scenarios:validate": httpx.Response(422, json=scenario_problem),
            "/v1/layouts:validate": httpx.Response(200, json={"valid": True}),
        }
    )
    root = _tree(tmp_path)
    code, out = _run(["validate", "-f", str(root)], recorder, monkeypatch)
    assert code == 1
    welcome = root / "templates" / "welcome"
    assert f"{welcome / 'body.html.j2'}: html: line 3: unknown variable contact.nmae" in out
    assert f"{root / 'scenarios' / 'welcome.yaml'}: steps.0.wait: not a duration" in out
    sent = {u.rsplit("/", 1)[1]: body for _, u, body, _ in recorder.calls}
    assert sent["templates:validate"]["id"] == "welcome"
    assert "layouts/base.html.j2" in sent["templates:validate"]["layouts"]
    assert sent["scenarios:validate"]["trigger"] == {"event": "signup"}


def test_unreachable_service_and_bad_yaml_fail(tmp_path, monkeypatch):
    root = _tree(tmp_path)
    (root / "scenarios" / "broken.yaml").write_text("trigger: [unclosed\n", encoding="utf-8")

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    monkeypatch.setenv("STEPMAIL_ADMIN_TOKEN", "t")
    out = io.StringIO()
    code = run(["apply", "-f", str(root)], out=out, transport=httpx.MockTransport(down))
    assert code == 1
    assert f"{root / 'scenarios' / 'broken.yaml'}: yaml:" in out.getvalue()
    assert "cannot reach http://127.0.0.1:8003/v1/templates/welcome" in out.getvalue()


def test_unauthorized_names_the_token(tmp_path, monkeypatch):
    recorder = Recorder({"": httpx.Response(401, json={"title": "Unauthorized"})})
    code, out = _run(["apply", "-f", str(_tree(tmp_path))], recorder, monkeypatch)
    assert code == 1
    assert "STEPMAIL_ADMIN_TOKEN" in out


def test_timeline_prints_the_dry_run_and_names_problems():
    seen: list[dict] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(
            {"url": str(request.url), "body": body, "auth": request.headers["authorization"]}
        )
        if request.url.path.endswith("/nope/timeline"):
            return httpx.Response(
                404,
                json={"title": "No active scenario with this id", "status": 404},
                headers={"content-type": "application/problem+json"},
            )
        return httpx.Response(
            200,
            json={
                "scenario": "cart",
                "contact_id": "c-1",
                "timeline": [
                    {
                        "at": "2026-11-23T13:00:00+09:00",
                        "step": "reminder",
                        "action": "send",
                        "template": "cart-reminder",
                        "variant": "a",
                    },
                    {
                        "at": "2026-11-24T09:00:00+09:00",
                        "step": "coupon",
                        "action": "send",
                        "template": "cart-coupon",
                        "variant": "a",
                        "held": True,
                    },
                    {"at": "2026-11-24T09:00:00+09:00", "step": None, "action": "completed"},
                ],
            },
        )

    out = io.StringIO()
    code = run(
        [
            "timeline",
            "cart",
            "--contact-id",
            "c-1",
            "--event",
            "checkout.started",
            "--property",
            "checkout_token=t-1",
            "--token",
            "tok",
            "--orchestrator-url",
            "http://orchestrator",
        ],
        out,
        httpx.MockTransport(answer),
    )
    assert code == 0
    assert seen[0]["url"] == "http://orchestrator/v1/scenarios/cart/timeline"
    assert seen[0]["auth"] == "Bearer tok"
    assert seen[0]["body"]["contact_id"] == "c-1"
    assert seen[0]["body"]["event"] == {
        "name": "checkout.started",
        "properties": {"checkout_token": "t-1"},
    }
    lines = out.getvalue().splitlines()
    assert "reminder" in lines[0]
    assert "cart-reminder" in lines[0]
    assert lines[1].endswith("(held)")

    out = io.StringIO()
    code = run(
        [
            "timeline",
            "nope",
            "--contact",
            '{"id": "x"}',
            "--event",
            "signup",
            "--orchestrator-url",
            "http://orchestrator",
        ],
        out,
        httpx.MockTransport(answer),
    )
    assert code == 1
    assert out.getvalue().strip() == "nope: -: No active scenario with this id"
