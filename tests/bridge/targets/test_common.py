"""The formatters' shared helpers: byte budgets, stable keys, scrubbing, link templates."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import ConfigError
from bridge.targets._common import (
    EPOCH,
    LinkTemplate,
    episode_start,
    hashed_key,
    json_bytes,
    json_size,
    rfc3339,
    scrub,
    truncate_json,
)
from bridge.targets.base import TRUNCATED
from tests.receivers.strategies import nasty_text

from .helpers import FUZZ, event


class TestTruncateJson:
    @FUZZ
    @given(nasty_text(200, huge=5000), st.integers(0, 3000))
    def test_fits_budget(self, text, budget):
        """The encoded result never exceeds the budget and is a prefix plus the marker."""
        out = truncate_json(text, budget)
        if out:
            assert json_size(out) <= budget
        if out != text and out:
            assert out.endswith(TRUNCATED)
            assert scrub(text).startswith(scrub(out[: -len(TRUNCATED)]))

    def test_escapes_counted(self):
        """Quotes double and control characters grow sixfold in the budget."""
        out = truncate_json("\x00" * 100, 100)
        assert json_size(out) <= 100 and out.endswith(TRUNCATED)

    def test_untouched_when_fitting(self):
        """Text that fits comes back unchanged."""
        assert truncate_json("abc", 5) == "abc"


class TestHashedKey:
    @given(st.text(min_size=1, max_size=600), st.integers(20, 300))
    def test_bounded_and_stable(self, key, limit):
        """Keys fit the limit and are a pure function of the input."""
        out = hashed_key(key, limit)
        assert len(out) <= limit
        assert out == hashed_key(key, limit)
        if len(key) <= limit:
            assert out == key

    def test_distinct_for_shared_prefix(self):
        """Long ids sharing a prefix keep distinct keys."""
        assert hashed_key("p" * 300 + "a", 255) != hashed_key("p" * 300 + "b", 255)


class TestScrub:
    def test_lone_surrogates_replaced(self):
        """Lone surrogates become U+FFFD; pairs and normal text survive."""
        assert scrub("a\ud800b") == "a\ufffdb"
        assert scrub("😀") == "😀"
        assert json.loads(json_bytes({"k": "x\udfff"})) == {"k": "x\ufffd"}


class TestTimes:
    def test_rfc3339_pads_years(self):
        """Years before 1000 keep four digits."""
        assert rfc3339(datetime(999, 1, 2, 3, 4, 5, tzinfo=timezone.utc)) == "0999-01-02T03:04:05Z"

    def test_episode_start(self):
        """The episode starts ``duration`` before the event, never before the epoch."""
        assert episode_start(event(duration_s=60)).minute == 14
        assert episode_start(replace(event(), duration_ns=2**63 - 1)) == EPOCH


class TestLinkTemplate:
    def test_render(self):
        """Variables are URL-encoded; missing tags render empty."""
        link = LinkTemplate.parse("k", "https://x/$series/$id?h=${tag_host}&z=${tag_zone}").render(event())
        assert link == "https://x/disk/disk_used%3Ahost%3Ddb-7?h=db-7&z="

    @pytest.mark.parametrize("text", ["https://x/$nope", "https://x/$", "https://x/${"])
    def test_rejects(self, text):
        """Unknown variables and stray dollars fail at config time."""
        with pytest.raises(ConfigError, match="^k:"):
            LinkTemplate.parse("k", text)
