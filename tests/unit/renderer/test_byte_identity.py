"""The renderer's output, byte for byte, over a broad corpus: speed-ups must not change it."""

import json

from tests.unit.renderer import corpus


def test_the_corpus_renders_to_the_recorded_bytes():
    recorded = json.loads(corpus.DIGESTS.read_text())
    found, count = corpus.digests()
    assert count == recorded["cases"]
    changed = sorted(group for group in found if found[group] != recorded["groups"].get(group))
    assert changed == []
    assert found.keys() == recorded["groups"].keys()
