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
# Template ids are bounded (the store's rows); a step naming an unknown id counts as "unknown".
TEMPLATE_FAILURES = Counter(
    "stepmail_renderer_template_failures_total",
    "Steps of a stored template that could not be rendered (dead-lettered)",
    ["template", "error"],
)
RENDER_SECONDS = Histogram(
    "stepmail_renderer_render_seconds",
    "Time to render one mail to MIME",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
LINKS_TRACKED = Histogram(
    "stepmail_renderer_links_per_mail",
    "Tracked links per rendered mail",
    buckets=(0, 1, 2, 5, 10, 20, 50, 100),
)
TEMPLATE_VERSIONS_CREATED = Counter(
    "stepmail_renderer_template_versions_created_total",
    "Template and layout versions stored because their content changed",
)
TEST_SENDS = Counter("stepmail_renderer_test_sends_total", "Test sends published")
