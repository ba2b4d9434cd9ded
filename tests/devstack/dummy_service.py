"""A stand-in service for runner tests: answers every GET with 200 and exits on SIGTERM."""

import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    server = HTTPServer((os.environ["HTTP_HOST"], int(os.environ["HTTP_PORT"])), _Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"dummy service on {os.environ['HTTP_PORT']}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
