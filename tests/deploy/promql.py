"""What the alert rules and the dashboard may name: the metrics stepmail's code exposes."""

from __future__ import annotations

import importlib
import re
from functools import cache

from prometheus_client import REGISTRY

SERVICES = ("ingest", "orchestrator", "renderer", "sender", "tracker")
# Series no stepmail code defines: Prometheus' own ``up``, and Strimzi's Kafka Exporter,
# which only StepmailDeadLetterTopicNotEmpty reads.
PROMETHEUS = frozenset({"up"})
KAFKA_EXPORTER = frozenset(
    {
        "kafka_topic_partition_current_offset",
        "kafka_topic_partition_oldest_offset",
        "kafka_consumergroup_current_offset",
    }
)

# PromQL's aggregations, functions and keywords: the identifiers that are no metric.
_KEYWORDS = """sum min max avg count group stddev stdvar topk bottomk quantile count_values
    rate irate increase delta idelta deriv changes resets predict_linear histogram_quantile
    avg_over_time min_over_time max_over_time sum_over_time count_over_time
    quantile_over_time last_over_time absent absent_over_time vector scalar time
    clamp clamp_min clamp_max label_replace label_join abs ceil floor round sort sort_desc
    and or unless by without on ignoring group_left group_right offset bool inf nan"""
_WORDS = frozenset(_KEYWORDS.split())
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_GROUPINGS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGES = re.compile(r"\[[^\]]*\]")
_IDENTIFIERS = re.compile(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _GROUPINGS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    return {word for word in _IDENTIFIERS.findall(text) if word.lower() not in _WORDS}


@cache
def exposed_names() -> frozenset[str]:
    """Every series name the five services expose (each imports its metrics with its app),
    as scraped: counters with ``_total``, histograms as ``_bucket``, ``_count``, ``_sum``."""
    for service in SERVICES:
        importlib.import_module(f"stepmail_{service}.app")
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}{suffix}" for suffix in ("_bucket", "_count", "_sum")}
        else:
            names.add(family.name)
    return frozenset(names)
