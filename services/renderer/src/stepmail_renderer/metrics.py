"""The renderer's Prometheus metrics."""

from prometheus_client import Counter, Histogram

MAILS_RENDERED = Counter(
    "stepmail_renderer_mails_rendered_total", "Mails rendered and published", ["mail_kind"]
)
RENDER_FAILURES = Counter(
    "stepmail_renderer_failures_total",
    "Steps that could not be rendered (dead-lettered), by error class",
    ["error"],
)
RENDER_SECONDS = Histogram(
    "stepmail_renderer_render_seconds",
    "Time to render one mail to MIME",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
)
LINKS_TRACKED = Histogram(
    "stepmail_renderer_links_per_mail",
    "Tracked links per rendered mail",
    buckets=(0, 1, 2, 5, 10, 20, 50, 100),
)
TEMPLATE_VERSIONS_CREATED = Counter(
    "stepmail_renderer_template_versions_created_total",
    "Template versions stored because a template file changed",
)
