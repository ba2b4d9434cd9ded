"""The pages a recipient sees: Japanese first, English below."""

from html import escape

from fastapi.responses import HTMLResponse

_STYLE = (
    "body{margin:0;background:#f5f5f5;color:#333;font-family:'Hiragino Sans',"
    "'Hiragino Kaku Gothic ProN',Meiryo,sans-serif;line-height:1.8}"
    "main{max-width:560px;margin:40px auto;padding:24px 28px;background:#fff;border-radius:6px}"
    "h1{font-size:20px;margin:0 0 12px}h2{font-size:16px;margin:24px 0 8px}"
    "section[lang=en]{border-top:1px solid #ddd;margin-top:24px;color:#555}"
    "button{font-size:16px;padding:10px 24px;border:0;border-radius:4px;"
    "background:#d9480f;color:#fff;cursor:pointer}"
    "button.secondary{background:#555}label{font-size:15px}"
)
# The token is in the URL: keep it out of referrers, caches and search engines.
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
}


def _page(title: str, japanese: str, english: str, status: int) -> HTMLResponse:
    body = (
        '<!DOCTYPE html>\n<html lang="ja">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="robots" content="noindex, nofollow">\n'
        f"<title>{title}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n<main>\n"
        f'<section lang="ja">\n{japanese}\n</section>\n'
        f'<section lang="en">\n{english}\n</section>\n'
        "</main>\n</body>\n</html>\n"
    )
    return HTMLResponse(body, status_code=status, headers=HEADERS)


def _topic_boxes(topics: dict[str, tuple[str, str]], opted_out: tuple[str, ...]) -> str:
    boxes = "".join(
        f'<label><input type="checkbox" name="topic" value="{escape(key)}"'
        f"{'' if key in opted_out else ' checked'}> {escape(ja)} / {escape(en)}</label><br>"
        for key, (ja, en) in topics.items()
    )
    return (
        '<form method="post"><input type="hidden" name="action" value="topics">'
        f"<p>受け取るメール / Emails you receive:</p><p>{boxes}</p>"
        '<button type="submit" class="secondary">設定を保存 / Save preferences</button></form>'
    )


def confirm_page(
    topics: dict[str, tuple[str, str]] | None = None, opted_out: tuple[str, ...] = ()
) -> HTMLResponse:
    """Asks before unsubscribing: link scanners follow GETs, people press the button.

    With ``topics`` (marketing mail) it is also the preference centre: keep some topics,
    drop others, or stop all of this kind.
    """
    form = (
        '<form method="post">'
        '<input type="hidden" name="action" value="unsubscribe">'
        '<button type="submit">配信を停止する / Unsubscribe</button></form>'
    )
    choice = _topic_boxes(topics, opted_out) if topics else ""
    return _page(
        "配信停止の確認 / Unsubscribe",
        "<h1>メール配信停止の確認</h1>"
        "<p>今後このメールの受信を希望されない場合は、下のボタンを押してください。"
        "ボタンを押すまで配信停止は完了しません。</p>"
        f"{form}"
        + (
            "<h2>配信設定</h2><p>一部のお知らせだけを停止することもできます。</p>" + choice
            if choice
            else ""
        ),
        "<h2>Unsubscribe</h2>"
        "<p>To stop receiving these emails, press the button above. "
        "Nothing changes until you press it."
        + (" You can also choose which topics you still receive.</p>" if choice else "</p>"),
        200,
    )


def unsubscribed_page(status: int = 200) -> HTMLResponse:
    """The state after an unsubscribe, with the way back (re-subscribe) on the same page."""
    form = (
        '<form method="post"><input type="hidden" name="action" value="resubscribe">'
        '<button type="submit" class="secondary">配信を再開する / Resubscribe</button></form>'
    )
    return _page(
        "配信停止中 / Unsubscribed",
        "<h1>配信停止のお手続きが完了しました</h1>"
        "<p>今後、この種類のメールはお送りしません。"
        "すでに送信処理に入っていたメールが届く場合がありますが、ご容赦ください。</p>"
        "<p>配信の再開をご希望の場合は、下のボタンを押してください。</p>"
        f"{form}",
        "<h2>You have been unsubscribed</h2>"
        "<p>You will not receive this kind of email from us any more. "
        "To receive them again, press the button above.</p>",
        status,
    )


def saved_page() -> HTMLResponse:
    return _page(
        "配信設定を保存しました / Preferences saved",
        "<h1>配信設定を保存しました</h1><p>変更はただちに反映されます。</p>",
        "<h2>Your preferences have been saved</h2><p>The change takes effect at once.</p>",
        200,
    )


def resubscribed_page() -> HTMLResponse:
    return _page(
        "配信を再開しました / Resubscribed",
        "<h1>配信を再開しました</h1><p>今後もメールをお送りします。ありがとうございます。</p>",
        "<h2>You are subscribed again</h2><p>Thank you: you will receive our emails again.</p>",
        200,
    )


def done_page() -> HTMLResponse:
    return _page(
        "配信停止が完了しました / Unsubscribed",
        "<h1>配信停止のお手続きが完了しました</h1>"
        "<p>今後、この種類のメールはお送りしません。"
        "すでに送信処理に入っていたメールが届く場合がありますが、ご容赦ください。</p>",
        "<h2>You have been unsubscribed</h2>"
        "<p>You will not receive this kind of email from us any more.</p>",
        200,
    )


def invalid_page() -> HTMLResponse:
    return _page(
        "無効なリンク / Invalid link",
        "<h1>このリンクは無効です</h1>"
        "<p>リンクが途中で切れているか、正しくない可能性があります。"
        "メールに記載されたURLを、すべてコピーして開き直してください。</p>",
        "<h2>This link is not valid</h2>"
        "<p>The link may be incomplete or damaged. "
        "Please open the full URL from the email again.</p>",
        400,
    )


def unavailable_page(retry_after: int) -> HTMLResponse:
    response = _page(
        "ただいま混み合っています / Temporarily unavailable",
        "<h1>ただいまお手続きを受け付けられません</h1>"
        "<p>お手数ですが、しばらくしてからもう一度お試しください。"
        "お手続きはまだ完了していません。</p>",
        "<h2>Temporarily unavailable</h2>"
        "<p>Your request has not been recorded yet. Please try again in a few moments.</p>",
        503,
    )
    response.headers["Retry-After"] = str(retry_after)
    return response
