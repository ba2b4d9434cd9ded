"""Template directories, link rewriting details and the renderer's settings."""

import pytest
from pydantic import ValidationError

from stepmail_renderer.links import LinkTracker
from stepmail_renderer.settings import RendererSettings
from stepmail_renderer.templates import TemplateLoadError, load_directory, load_template
from tests.unit.renderer.helpers import REPO, WELCOME_DIR


def test_the_welcome_template_loads():
    welcome = load_template(WELCOME_DIR)
    assert welcome.id == "welcome"
    assert welcome.mail_kind == "marketing"
    assert "contact.name | default('お客様')" in welcome.subject
    assert welcome.text is not None
    assert "https://shop.example.com/getting-started" in welcome.html
    assert [t.id for t in load_directory(REPO / "examples" / "templates")].count("welcome") == 1


def test_a_changed_file_changes_the_content_hash(tmp_path):
    directory = tmp_path / "news"
    directory.mkdir()
    (directory / "template.yaml").write_text("subject: お知らせ\n", encoding="utf-8")
    (directory / "body.html.j2").write_text("<p>一</p>\n", encoding="utf-8")
    first = load_template(directory)
    assert first.text is None
    (directory / "body.html.j2").write_text("<p>二</p>\n", encoding="utf-8")
    assert load_template(directory).content_hash != first.content_hash
    (directory / "body.html.j2").write_text("<p>一</p>\r\n", encoding="utf-8")
    assert load_template(directory).content_hash == first.content_hash


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ("subject: [unclosed\n", "not YAML"),
        ("preheader: x\n", "subject"),
        ("subject: x\nmail_kind: spam\n", "mail_kind"),
        ("subject: x\nsubjetc: y\n", "unknown keys"),
    ],
)
def test_malformed_templates_are_refused_with_the_file_named(tmp_path, meta, message):
    directory = tmp_path / "bad"
    directory.mkdir()
    (directory / "template.yaml").write_text(meta, encoding="utf-8")
    (directory / "body.html.j2").write_text("<p>x</p>", encoding="utf-8")
    with pytest.raises(TemplateLoadError, match=message) as caught:
        load_template(directory)
    assert "template.yaml" in str(caught.value)


def test_a_missing_body_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "template.yaml").write_text("subject: x\n", encoding="utf-8")
    with pytest.raises(TemplateLoadError, match=r"body\.html\.j2: missing"):
        load_template(tmp_path / "empty")


def test_links_outside_anchors_and_non_http_links_are_left_alone():
    tracker = LinkTracker(lambda index, url: f"T{index}", keep=set())
    html = (
        '<link rel="stylesheet" href="https://cdn.example.com/a.css">'
        '<img src="https://cdn.example.com/logo.png">'
        '<a href="tel:0300000000">電話</a><a class="x" href = "https://a.example.com/">a</a>'
    )
    out = tracker.html(html)
    assert 'href="https://cdn.example.com/a.css"' in out
    assert 'src="https://cdn.example.com/logo.png"' in out
    assert 'href="tel:0300000000"' in out
    assert 'href = "T0"' in out
    text = tracker.text("詳細はhttps://a.example.com/。またはhttps://b.example.com/x).\n")
    assert text == "詳細はT0。またはT1).\n"


def test_non_ascii_urls_are_percent_encoded_before_signing():
    seen: list[str] = []

    def wrap(index: int, url: str) -> str:
        seen.append(url)
        return f"T{index}"

    tracker = LinkTracker(wrap, keep=set())
    tracker.html('<a href="https://shop.example.jp/商品?q=靴 下">x</a>')
    assert seen == ["https://shop.example.jp/%E5%95%86%E5%93%81?q=%E9%9D%B4%20%E4%B8%8B"]


def _settings(**env: str) -> RendererSettings:
    return RendererSettings.model_validate(env)


def test_production_refuses_dev_signing_keys_and_plain_http():
    with pytest.raises(ValidationError, match="SIGNING_KEYS"):
        _settings(
            stepmail_env="production",
            stepmail_admin_token="prod-admin-token-0123456789",
            tracker_public_url="https://t.example.jp",
        )
    with pytest.raises(ValidationError, match="STEPMAIL_ADMIN_TOKEN"):
        _settings(
            stepmail_env="production",
            signing_keys="k2:prod-secret-0123456789abcdef",
            tracker_public_url="https://t.example.jp",
        )
    with pytest.raises(ValidationError, match="https"):
        _settings(
            stepmail_env="production",
            signing_keys="k2:prod-secret-0123456789abcdef",
            stepmail_admin_token="prod-admin-token-0123456789",
            tracker_public_url="http://t.example.jp",
        )


def test_settings_know_the_from_domain():
    settings = _settings(mail_from="stepmail デモ <hello@example.com>")
    assert settings.mail_from_address == "hello@example.com"
    assert settings.unsubscribe_mailbox == "unsubscribe@example.com"


@pytest.mark.parametrize("size", ["0", "2001"])
def test_a_batch_size_out_of_range_is_refused(size: str):
    with pytest.raises(ValidationError, match="renderer_batch_max"):
        _settings(renderer_batch_max=size)
    assert _settings(renderer_batch_max="500").renderer_batch_max == 500
