"""One password mask for URLs, alone or inside any text (errors, logs)."""

from __future__ import annotations

import pytest

from controller.masking import mask_url, redact


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:hunter2@db:6379/0?list=j", "redis://:***@db:6379/0?list=j"),
        ("redis://user:hunter2@db/0", "redis://user:***@db/0"),
        ("redis://user:hun?ter#2@db/0", "redis://***@db/0"),  # an unencoded '?' cuts the authority short
        ("redis://db:6379/0", "redis://db:6379/0"),
        ("nats://s3cr3t-token@nats:4222", "nats://s3cr3t-token@nats:4222"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_a_lone_user_part_is_a_secret_when_asked() -> None:
    assert mask_url("nats://s3cr3t-token@nats:4222", secret_user=True) == "nats://***@nats:4222"


def test_redact_masks_every_url_in_text_and_keeps_the_rest() -> None:
    text = "cannot reach 'redis://:pw1@a:1/0' nor (rediss://u:pw2@b/0); see http://docs"
    assert redact(text) == "cannot reach 'redis://:***@a:1/0' nor (rediss://u:***@b/0); see http://docs"
