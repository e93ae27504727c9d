"""Every ``[[target]]`` key, declared once: type, default, meaning, target types.

The keys every type accepts (``name``, ``type``, ``rate_limit``, …) are fields of
:class:`bridge.config.TargetConfig`; the ones below belong to the platform
formatters. Validation, ``check-config``, ``config-reference`` and
``docs/configuration.md`` all read this table, so adding a key is one
:class:`~bridge.schema.Key` here (plus reading it in the type's ``from_options``).
A key name may be declared more than once for disjoint types when its meaning or
default differs (``url`` is required for most types, defaulted for some).
"""

from __future__ import annotations

from typing import Tuple

from ..schema import (
    DURATION,
    FILE,
    INTEGER,
    LEVELS,
    NONEMPTY,
    STRING,
    STRING_MAP,
    STRING_LIST,
    STRING_OR_LIST,
    URL,
    Key,
)
from . import email, ilert, opsgenie, pagerduty, splunk_oncall
from . import alertmanager as am
from . import squadcast as sc

__all__ = ["TARGET_KEYS", "keys_for"]

_LEVELS_DOC = "Per Kapacitor level, the platform's value; merged over the defaults."
_LINK_DOC = (
    "Back link per alert: a template with $id $level $series $time ${tag_<name>} "
    "(values URL-encoded), e.g. \"https://grafana.example.com/d/x?var-host=${tag_host}\"."
)

TARGET_KEYS: Tuple[Key, ...] = (
    # -- URLs --------------------------------------------------------------------
    Key(
        "url",
        URL,
        "Integration URL; it carries the integration's secret token.",
        required=True,
        secret=True,
        types=("grafana-oncall", "grafana-oncall-webhook", "splunk-oncall", "squadcast"),
    ),
    Key("url", URL, "Endpoint the event is POSTed to.", required=True, secret=True, types=("webhook",)),
    Key(
        "url",
        URL,
        "Alertmanager base URL (`/api/v2/alerts` is appended unless present); the first member of an HA cluster.",
        required=True,
        types=("alertmanager",),
    ),
    Key(
        "urls",
        STRING_LIST,
        "Further members of an Alertmanager HA cluster (members share no alerts): each member gets "
        "every alert through its own queue (`<name>@2`…), so a failing member is retried alone.",
        types=("alertmanager",),
    ),
    Key(
        "resend_interval",
        DURATION,
        "Every open alert is re-posted this often (with `endsAt` 4 intervals ahead), so Alertmanager "
        "neither resolves it after `resolve_timeout` nor forgets it on restart; keep it below "
        "`resolve_timeout` (check-config warns at 5m or more).",
        default_text='`"1m"`',
        positive=True,
        types=("alertmanager",),
    ),
    Key(
        "labels",
        STRING_LIST,
        "Tag keys to add as labels although the alert id does not encode them (their value must "
        "not change while the id fires, or the alert splits in two).",
        types=("alertmanager",),
    ),
    Key(
        "url",
        URL,
        "Receiver URL of an Alertmanager-compatible webhook consumer.",
        required=True,
        secret=True,
        types=("alertmanager-webhook",),
    ),
    Key("url", URL, "Events API v2 endpoint (EU accounts: events.eu.pagerduty.com).", pagerduty.DEFAULT_URL, types=("pagerduty",)),
    Key("url", URL, "API base URL (EU accounts: https://api.eu.opsgenie.com).", opsgenie.DEFAULT_URL, types=("opsgenie",)),
    Key("url", URL, "Events API endpoint.", ilert.DEFAULT_URL, types=("ilert",)),
    # -- credentials ---------------------------------------------------------------
    Key(
        "routing_key",
        NONEMPTY,
        "Integration key of an Events API v2 integration (32 characters; not a REST API key).",
        required=True,
        secret=True,
        types=("pagerduty",),
    ),
    Key("api_key", NONEMPTY, "API key of an Opsgenie API integration.", required=True, secret=True, types=("opsgenie",)),
    Key(
        "integration_key", NONEMPTY, "Key of an ilert alert source.", required=True, secret=True, types=("ilert",)
    ),
    # -- level mappings ------------------------------------------------------------
    Key("levels", LEVELS, _LEVELS_DOC + " Values: critical, error, warning, info.", dict(pagerduty.DEFAULT_LEVELS), types=("pagerduty",)),
    Key("levels", LEVELS, _LEVELS_DOC + " Values: P1…P5.", dict(opsgenie.DEFAULT_LEVELS), types=("opsgenie",)),
    Key("levels", LEVELS, _LEVELS_DOC + " Values: HIGH, LOW.", dict(ilert.DEFAULT_LEVELS), types=("ilert",)),
    Key(
        "levels",
        LEVELS,
        _LEVELS_DOC + " Values: CRITICAL, WARNING, INFO (message_type).",
        dict(splunk_oncall.DEFAULT_LEVELS),
        types=("splunk-oncall",),
    ),
    Key("levels", LEVELS, _LEVELS_DOC + " Values: any non-empty severity.", dict(sc.DEFAULT_LEVELS), types=("squadcast",)),
    Key(
        "levels",
        LEVELS,
        _LEVELS_DOC + " Values: the `severity` label.",
        dict(am.DEFAULT_LEVELS),
        types=("alertmanager", "alertmanager-webhook"),
    ),
    # -- links and presentation ----------------------------------------------------
    Key("link_template", STRING, _LINK_DOC, types=("grafana-oncall-webhook", "alertmanager", "alertmanager-webhook")),
    Key("image_url", URL, "Image shown with the alert group.", types=("grafana-oncall-webhook",)),
    Key("receiver", STRING, "`receiver` field of the webhook body.", "kapacitor-oncall", types=("alertmanager-webhook",)),
    Key("external_url", URL, "`externalURL` field of the webhook body (a link back to the sender).", types=("alertmanager-webhook",)),
    # -- webhook -------------------------------------------------------------------
    Key(
        "headers",
        STRING_MAP,
        "Extra request headers; values of credential-looking headers are treated as secrets.",
        types=("webhook",),
    ),
    Key(
        "template",
        FILE,
        "string.Template file for the body: $id $level $previous_level $message $details $time "
        "$duration_seconds $series $tags_json $fields_json $event_json (…_json: JSON-escaped). "
        "Without it, Kapacitor's JSON is forwarded.",
        types=("webhook",),
    ),
    Key("content_type", STRING, "Content-Type of the body.", "application/json", types=("webhook",)),
    # -- e-mail --------------------------------------------------------------------
    Key("smtp_host", NONEMPTY, "SMTP server host name.", required=True, types=("email",)),
    Key(
        "smtp_port",
        INTEGER,
        "SMTP server port.",
        default_text="587 (starttls), 465 (ssl), 25 (none)",
        minimum=1,
        maximum=65535,
        types=("email",),
    ),
    Key("tls", STRING, "Transport security.", "starttls", choices=email.TLS_MODES, types=("email",)),
    Key("from", NONEMPTY, "Sender address.", required=True, types=("email",)),
    Key("to", STRING_OR_LIST, "Recipient address, or an array of them.", required=True, types=("email",)),
    Key("username", STRING, "SMTP AUTH user (needs `password` and tls other than none).", secret=True, types=("email",)),
    Key("password", STRING, "SMTP AUTH password.", secret=True, types=("email",)),
    Key(
        "style",
        STRING,
        "`mailbox`: level and id in the subject; `oncall`: one subject per id and a body of `OK` "
        "on recovery, for Grafana OnCall's inbound e-mail integration.",
        "mailbox",
        choices=email.STYLES,
        types=("email",),
    ),
)


def keys_for(type_name: str) -> Tuple[Key, ...]:
    """The type-specific keys of ``type_name``, in declaration order."""
    return tuple(k for k in TARGET_KEYS if k.applies_to(type_name) and k.types)
