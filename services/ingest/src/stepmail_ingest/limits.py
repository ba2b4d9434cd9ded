"""Request size limit: bodies over ``max_bytes`` are refused with 413 before any work."""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stepmail_common.problems import Problem, problem_response


class BodyLimit:
    """Reads the whole body (up to the limit) before the app sees it; 413 past it.

    Buffering also makes the limit hold for chunked bodies without a Content-Length.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_bytes:
                    await self._refuse(scope, receive, send)
                    return
                break
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = Problem(
            413,
            "Request body too large",
            f"The body exceeds {self.max_bytes} bytes; nothing was accepted.",
            type_="urn:stepmail:problem:too-large",
            errors=[{"field": "body", "detail": f"at most {self.max_bytes} bytes"}],
        )
        await problem_response(problem, scope.get("path"))(scope, receive, send)
