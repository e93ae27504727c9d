"""Strict local stand-ins for the on-call platforms, one per target ``type``.

``RECEIVERS[type]()`` builds a receiver; ``start()`` serves it on loopback, ``url``
(or ``target_table()``) is what the bridge config needs. Each module also exports
its pure ``validate_*`` function so formatters can be fuzzed without a server.
"""

from __future__ import annotations

from typing import Any, Dict

from ._base import Answer, Incoming, Receiver
from .alertmanager import AlertmanagerReceiver, validate_alertmanager_alerts
from .grafana_oncall import (
    OnCallAlertmanagerReceiver,
    OnCallFormattedWebhookReceiver,
    OnCallKapacitorReceiver,
    validate_alertmanager_webhook,
    validate_kapacitor_event,
    validate_oncall_formatted_webhook,
)
from .ilert import IlertReceiver, validate_ilert
from .opsgenie import OpsgenieReceiver, validate_opsgenie_close, validate_opsgenie_create
from .pagerduty import PagerDutyReceiver, validate_pagerduty
from .smtp import SmtpReceiver, make_certificate, validate_email
from .splunk_oncall import SplunkOnCallReceiver, validate_splunk_oncall
from .squadcast import SquadcastReceiver, validate_squadcast
from .webhook import WebhookReceiver

__all__ = [
    "RECEIVERS",
    "AlertmanagerReceiver",
    "Answer",
    "IlertReceiver",
    "Incoming",
    "OnCallAlertmanagerReceiver",
    "OnCallFormattedWebhookReceiver",
    "OnCallKapacitorReceiver",
    "OpsgenieReceiver",
    "PagerDutyReceiver",
    "Receiver",
    "SmtpReceiver",
    "SplunkOnCallReceiver",
    "SquadcastReceiver",
    "WebhookReceiver",
    "make_certificate",
    "validate_alertmanager_alerts",
    "validate_alertmanager_webhook",
    "validate_email",
    "validate_ilert",
    "validate_kapacitor_event",
    "validate_oncall_formatted_webhook",
    "validate_opsgenie_close",
    "validate_opsgenie_create",
    "validate_pagerduty",
    "validate_splunk_oncall",
    "validate_squadcast",
]

#: Target ``type`` -> receiver class. ``email`` needs no certificate with ``tls="none"``.
RECEIVERS: Dict[str, Any] = {
    "alertmanager": AlertmanagerReceiver,
    "alertmanager-webhook": OnCallAlertmanagerReceiver,
    "email": SmtpReceiver,
    "grafana-oncall": OnCallKapacitorReceiver,
    "grafana-oncall-webhook": OnCallFormattedWebhookReceiver,
    "ilert": IlertReceiver,
    "opsgenie": OpsgenieReceiver,
    "pagerduty": PagerDutyReceiver,
    "splunk-oncall": SplunkOnCallReceiver,
    "squadcast": SquadcastReceiver,
    "webhook": WebhookReceiver,
}
