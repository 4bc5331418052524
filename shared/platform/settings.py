"""App settings: parsed and validated once, on first use, from the environment.

Defaults live in ``DEFAULTS`` and nowhere else; ``local.settings.sample.json`` mirrors them
(a test keeps the two in step). Every missing or invalid value is reported in one error.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared.platform.errors import SettingsError

APP_ROOT = Path(__file__).resolve().parents[2]  # the function app: host.json sits here

# Azurite's documented development account, used for `UseDevelopmentStorage=true`.
DEVELOPMENT_STORAGE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
    "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)

STORAGE = "AzureWebJobsStorage"

DEFAULTS: dict[str, str] = {
    "RESET_REQUEST_QUEUE": "guest-reset-requests",
    "RESET_RESULT_QUEUE": "guest-reset-results",
    "RESET_STATUS_TABLE": "GuestResetStatus",
    "RESET_CALLBACK_QUEUE": "guest-reset-callbacks",
    "RESET_STATE_TABLE": "GuestResetState",
    "GRAPH_BASE_URL": "https://graph.microsoft.com/v1.0",
    # The directory (tenant) id; empty: read from the app's Graph token (its `tid` claim).
    "AZURE_TENANT_ID": "",
    # Empty: the cloud's My Apps portal for the tenant (my_apps_url below).
    "INVITE_REDIRECT_URL": "",
    "SEND_INVITATION_MESSAGE": "false",
    "ALLOWED_EMAIL_DOMAINS": "",
    "BLOCKED_EMAIL_DOMAINS": "",
    "ALLOW_MEMBER_RESET": "false",
    # App-wide, shared by every instance: 90% of Graph's 20 writes/s (docs/operations.md).
    "GRAPH_WRITES_PER_SECOND": "18",
    "GRAPH_WRITE_BURST": "15",
    "GRAPH_RETRY_DELAYS": "1,2,4,8",
    "GRAPH_MAX_ATTEMPTS": "5",
    "GRAPH_TIMEOUT_SECONDS": "30",
    # One delivery's deadline; must stay below host.json functionTimeout (checked).
    "DELIVERY_DEADLINE_SECONDS": "240",
    # How long after an uncertain invitation the guest is read back for evidence.
    "READBACK_WINDOW_SECONDS": "60",
    # transitive: beta transitiveRoleAssignments (direct and group-held roles, every scope);
    # direct: v1.0 roleAssignments (direct roles only). docs/graph.md says why.
    "ROLE_CHECK": "transitive",
    # How long a reset waits for its own email switch to read back before inviting.
    "REPLICATION_WAIT_SECONDS": "30",
    # App-wide invitations per minute (POST /invitations), apart from GRAPH_WRITES_PER_SECOND.
    "INVITATIONS_PER_MINUTE": "6",
    # While the invitation breaker is open, a held request looks again this often.
    "BREAKER_HOLD_SECONDS": "300",
    "CALLBACK_ALLOWED_HOSTS": (
        "*.logic.azure.com,*.azure-apim.net,*.flow.microsoft.com,*.powerautomate.com,*.api.powerplatform.com"
    ),
    "ALLOWED_CALLERS": "",
    # Least power (docs/security.md): who may do what. Empty capability lists mean the safe
    # default (a plain reset, plus an email switch once ALLOWED_EMAIL_DOMAINS is set).
    "REQUIRE_ENTRA_ID": "false",
    "KEY_CAPABILITIES": "",
    "QUEUE_CAPABILITIES": "",
    # Empty: only INVITE_REDIRECT_URL itself.
    "REDIRECT_ALLOWED_URLS": "",
    "ALLOW_CUSTOM_MESSAGE_BODY": "false",
    "RETENTION_DAYS": "30",
    "REDEEM_URL_HOURS": "72",
    "BULK_CONTAINER": "bulk-resets",
    # NCRONTAB with seconds ({second} {minute} {hour} {day} {month} {day-of-week}), in UTC.
    "BULK_SCHEDULE": "0 */5 * * * *",
    # The sweeper of stalled requests (NCRONTAB, UTC) and how long a request may show no sign of
    # life before it counts as stalled.
    "SWEEP_SCHEDULE": "30 */5 * * * *",
    "SWEEP_GRACE_SECONDS": "300",
}


class GraphCloud(Enum):
    """Microsoft Graph deployments; the value is the Entra authority host for tokens."""

    GLOBAL = "login.microsoftonline.com"
    US_GOV = "login.microsoftonline.us"
    CHINA = "login.chinacloudapi.cn"
    EMULATOR = ""


class Capability(StrEnum):
    """What a caller may do; the values are the app roles of the API's app registration.

    ``shared.reset.capabilities`` says which request needs which; docs/security.md lists them.
    """

    SUBMIT = "Reset.Submit"  # a plain reset: the guest keeps its address
    SWITCH_EMAIL = "Reset.SwitchEmail"  # newEmail
    MESSAGE_OPTIONS = "Reset.MessageOptions"  # a custom redirect, cc, a custom message body
    READ_ALL = "Reset.ReadAll"  # statuses of requests someone else submitted
    READ_REDEEM_URL = "Reset.ReadRedeemUrl"  # the redeem link of a reset that sent no email
    OPERATE = "Reset.Operate"  # poison list and replay


# Capabilities that make sense for each kind of caller without an identity of its own.
KEY_GRANTABLE = frozenset(Capability) - {Capability.OPERATE}  # operating needs the admin key
QUEUE_GRANTABLE = frozenset({Capability.SUBMIT, Capability.SWITCH_EMAIL, Capability.MESSAGE_OPTIONS})

# Where a guest lands after redeeming, per cloud (with ?tenantId=): Microsoft's examples use My
# Apps; docs/deploy.md#national-clouds gives the sources and what is our own reading.
_MY_APPS = {
    GraphCloud.GLOBAL: "https://myapps.microsoft.com",
    GraphCloud.US_GOV: "https://myapps.microsoft.us",
    GraphCloud.CHINA: "https://myapplications.windowsazure.cn",
    GraphCloud.EMULATOR: "https://myapps.microsoft.com",
}
_GUID_RE = r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$"
ROLE_CHECKS = ("transitive", "direct")

_GRAPH_HOSTS = {
    "graph.microsoft.com": GraphCloud.GLOBAL,
    "graph.microsoft.us": GraphCloud.US_GOV,
    "dod-graph.microsoft.us": GraphCloud.US_GOV,
    "microsoftgraph.chinacloudapi.cn": GraphCloud.CHINA,
}
_QUEUE_RE = r"^[a-z0-9](?!.*--)[a-z0-9-]{1,54}[a-z0-9]$"  # leaves room for "-poison"
_CONTAINER_RE = r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$"


@dataclass(frozen=True)
class StorageConnection:
    """Either a connection string (local, Azurite) or identity-based service URIs (Azure)."""

    connection_string: str | None = None
    queue_service_uri: str | None = None
    table_service_uri: str | None = None
    blob_service_uri: str | None = None
    client_id: str | None = None

    @property
    def uses_identity(self) -> bool:
        return self.connection_string is None


@dataclass(frozen=True)
class Settings:
    storage: StorageConnection
    request_queue: str
    result_queue: str
    status_table: str
    graph_base_url: str
    graph_cloud: GraphCloud
    azure_client_id: str | None
    invite_redirect_url: str | None
    send_invitation_message: bool
    allowed_email_domains: frozenset[str]
    blocked_email_domains: frozenset[str]
    allow_member_reset: bool
    graph_writes_per_second: float
    graph_write_burst: int
    graph_retry_delays: tuple[float, ...]
    graph_max_attempts: int
    graph_timeout_seconds: float
    callback_allowed_hosts: tuple[str, ...]
    allowed_callers: frozenset[str] = frozenset()
    require_entra_id: bool = False
    key_capabilities: frozenset[Capability] = frozenset({Capability.SUBMIT})
    queue_capabilities: frozenset[Capability] = frozenset({Capability.SUBMIT})
    redirect_allowed_urls: tuple[str, ...] = ()
    allow_custom_message_body: bool = False
    retention_days: int = 30
    redeem_url_hours: int = 72
    max_dequeue_count: int = 5
    bulk_container: str = DEFAULTS["BULK_CONTAINER"]
    bulk_schedule: str = DEFAULTS["BULK_SCHEDULE"]
    callback_queue: str = DEFAULTS["RESET_CALLBACK_QUEUE"]
    delivery_deadline_seconds: float = float(DEFAULTS["DELIVERY_DEADLINE_SECONDS"])
    readback_window_seconds: float = float(DEFAULTS["READBACK_WINDOW_SECONDS"])
    sweep_schedule: str = DEFAULTS["SWEEP_SCHEDULE"]
    sweep_grace_seconds: float = float(DEFAULTS["SWEEP_GRACE_SECONDS"])
    tenant_id: str | None = None
    role_check: str = DEFAULTS["ROLE_CHECK"]
    replication_wait_seconds: float = float(DEFAULTS["REPLICATION_WAIT_SECONDS"])
    invitations_per_minute: float = float(DEFAULTS["INVITATIONS_PER_MINUTE"])
    breaker_hold_seconds: float = float(DEFAULTS["BREAKER_HOLD_SECONDS"])
    state_table: str = DEFAULTS["RESET_STATE_TABLE"]

    @property
    def poison_queue(self) -> str:
        return f"{self.request_queue}-poison"

    @property
    def uses_graph_emulator(self) -> bool:
        return self.graph_cloud is GraphCloud.EMULATOR

    @property
    def graph_beta_url(self) -> str:
        """The same Graph host's beta root (one documented call, the transitive role check, lives there)."""
        root, _, _version = self.graph_base_url.rpartition("/")
        return f"{root}/beta"

    def my_apps_url(self, tenant_id: str | None) -> str:
        """The default redirect: the cloud's My Apps portal, opened in the tenant when it is known."""
        base = _MY_APPS[self.graph_cloud]
        tenant = self.tenant_id or tenant_id
        return f"{base}?tenantId={tenant}" if tenant else base

    @property
    def default_redirect(self) -> str:
        """The redirect a request gets when it names none (the token's tenant is added at send time)."""
        return self.invite_redirect_url or self.my_apps_url(None)

    @property
    def redirect_allowlist(self) -> tuple[str, ...]:
        """Where a request's inviteRedirectUrl may point: REDIRECT_ALLOWED_URLS, else the default redirect.

        The default without AZURE_TENANT_ID is My Apps without a tenant, which admits any
        ``?tenantId=`` (My Apps itself decides what the guest may open there).
        """
        return self.redirect_allowed_urls or (self.default_redirect,)

    @property
    def graph_scope(self) -> str:
        parts = urlsplit(self.graph_base_url)
        return f"{parts.scheme}://{parts.netloc}/.default"

    @property
    def login_base_url(self) -> str:
        """The Entra login host of the Graph cloud (its public ``userrealm`` endpoint lives there).

        The emulator serves that endpoint itself, so a loopback Graph URL means its own origin:
        a home-realm lookup never leaves the machine in a local run.
        """
        if self.uses_graph_emulator:
            parts = urlsplit(self.graph_base_url)
            return f"{parts.scheme}://{parts.netloc}"
        return f"https://{self.graph_cloud.value}"


class _Reader:
    """Collects every problem instead of stopping at the first one."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def text(self, name: str) -> str:
        return self.env.get(name, DEFAULTS.get(name, "")).strip()

    def boolean(self, name: str) -> bool:
        value = self.text(name).lower()
        if value in {"true", "1", "yes"}:
            return True
        if value in {"false", "0", "no", ""}:
            return False
        self.problems.append(f"{name}={value!r} is not a boolean; use true or false")
        return False

    def number(self, name: str, *, minimum: float, maximum: float) -> float:
        value = self.text(name)
        try:
            number = float(value)
        except ValueError:
            self.problems.append(f"{name}={value!r} is not a number")
            return minimum
        if not minimum <= number <= maximum:
            self.problems.append(f"{name}={value} must be between {minimum:g} and {maximum:g}")
        return number

    def domains(self, name: str) -> frozenset[str]:
        items = {d.strip().lower().lstrip("@") for d in self.text(name).split(",") if d.strip()}
        for item in sorted(items):
            if "." not in item or any(c in item for c in " /@:"):
                self.problems.append(f"{name} holds {item!r}, which is not a domain name")
        return frozenset(items)

    def capabilities(
        self, name: str, grantable: frozenset[Capability], default: frozenset[Capability]
    ) -> frozenset[Capability]:
        """A comma-separated list of app role values; empty means ``default``, ``none`` means nothing."""
        text = self.text(name)
        if not text:
            return default
        if text.lower() == "none":
            return frozenset()
        known = {c.value.lower(): c for c in Capability}
        found: set[Capability] = set()
        for item in (i.strip() for i in text.split(",") if i.strip()):
            capability = known.get(item.lower())
            if capability is None:
                self.problems.append(
                    f"{name} holds {item!r}, which is not a capability; use {', '.join(c.value for c in Capability)}"
                )
            elif capability not in grantable:
                self.problems.append(f"{name} cannot grant {capability.value} (see docs/security.md)")
            else:
                found.add(capability)
        return frozenset(found)

    def object_ids(self, name: str) -> frozenset[str]:
        """Object or application ids (GUIDs): immutable, unlike names and UPNs."""
        found: set[str] = set()
        for item in (i.strip() for i in self.text(name).split(",") if i.strip()):
            try:
                found.add(str(uuid.UUID(item)))
            except ValueError:
                self.problems.append(
                    f"{name} holds {item!r}, which is not an object or application id (a GUID); "
                    "names and UPNs can change, ids cannot"
                )
        return frozenset(found)

    def name(self, name: str, pattern: str, what: str) -> str:
        value = self.text(name)
        if not re.match(pattern, value):
            self.problems.append(f"{name}={value!r} is not a valid {what}")
        return value


def _storage(reader: _Reader) -> StorageConnection:
    env = reader.env
    conn = env.get(STORAGE, "").strip()
    prefix = f"{STORAGE}__"
    queue_uri = env.get(f"{prefix}queueServiceUri", "").strip()
    table_uri = env.get(f"{prefix}tableServiceUri", "").strip()
    blob_uri = env.get(f"{prefix}blobServiceUri", "").strip()
    account = env.get(f"{prefix}accountName", "").strip()
    if conn:
        if conn.lower().replace(" ", "") == "usedevelopmentstorage=true":
            conn = DEVELOPMENT_STORAGE
        return StorageConnection(connection_string=conn)
    if account and not queue_uri:
        queue_uri = f"https://{account}.queue.core.windows.net"
        table_uri = table_uri or f"https://{account}.table.core.windows.net"
        blob_uri = blob_uri or f"https://{account}.blob.core.windows.net"
    if not (queue_uri and table_uri):
        reader.problems.append(
            f"{STORAGE} is not set: give a connection string (UseDevelopmentStorage=true locally) "
            f"or the identity-based {prefix}queueServiceUri and {prefix}tableServiceUri"
        )
        return StorageConnection()
    for key, uri in (("queueServiceUri", queue_uri), ("tableServiceUri", table_uri)):
        if not uri.startswith("https://"):
            reader.problems.append(f"{prefix}{key}={uri!r} must be an https URL")
    return StorageConnection(
        queue_service_uri=queue_uri,
        table_service_uri=table_uri,
        blob_service_uri=blob_uri or None,
        client_id=env.get(f"{prefix}clientId", "").strip() or None,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _graph(reader: _Reader) -> tuple[str, GraphCloud]:
    url = reader.text("GRAPH_BASE_URL").rstrip("/")
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme == "https" and host in _GRAPH_HOSTS:
        if parts.path not in {"/v1.0", "/beta"}:
            reader.problems.append(f"GRAPH_BASE_URL={url!r} must end with /v1.0 (or /beta)")
        return url, _GRAPH_HOSTS[host]
    if parts.scheme == "http" and _is_loopback(host):
        return url, GraphCloud.EMULATOR
    reader.problems.append(
        f"GRAPH_BASE_URL={url!r} is not a Microsoft Graph endpoint; use one of "
        + ", ".join(f"https://{h}/v1.0" for h in _GRAPH_HOSTS)
        + " (a loopback http URL is accepted only for the local Graph emulator)"
    )
    return url, GraphCloud.GLOBAL


def _https_url(reader: _Reader, name: str) -> str:
    value = reader.text(name)
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc:
        reader.problems.append(f"{name}={value!r} must be an https URL")
    return value


def _redirect_allowlist(reader: _Reader) -> tuple[str, ...]:
    """Redirect URLs a request may name; empty: the default redirect alone (Settings.redirect_allowlist)."""
    entries = tuple(u.strip() for u in reader.text("REDIRECT_ALLOWED_URLS").split(",") if u.strip())
    for entry in entries:
        parts = urlsplit(entry)
        if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
            reader.problems.append(f"REDIRECT_ALLOWED_URLS holds {entry!r}, which is not an https URL without userinfo")
    return entries


def _optional_https_url(reader: _Reader, name: str) -> str | None:
    return _https_url(reader, name) if reader.text(name) else None


def _tenant_id(reader: _Reader) -> str | None:
    value = reader.text("AZURE_TENANT_ID")
    if value and not re.match(_GUID_RE, value):
        reader.problems.append(f"AZURE_TENANT_ID={value!r} is not a directory (tenant) id; give its GUID")
    return value.lower() or None


def _choice(reader: _Reader, name: str, choices: tuple[str, ...]) -> str:
    value = reader.text(name).lower()
    if value not in choices:
        reader.problems.append(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value


def _schedule(reader: _Reader, name: str) -> str:
    """An NCRONTAB expression with the seconds field, as the timer trigger reads it (UTC)."""
    value = reader.text(name)
    fields = value.split()
    if len(fields) != 6 or not all(re.fullmatch(r"[0-9A-Za-z*/,\-]+", f) for f in fields):
        reader.problems.append(
            f"{name}={value!r} is not an NCRONTAB schedule with six fields "
            "({second} {minute} {hour} {day} {month} {day-of-week}), e.g. '0 */5 * * * *'"
        )
    return value


def _host_json() -> dict[str, Any]:
    try:
        loaded = json.loads((APP_ROOT / "host.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _max_dequeue_count(env: Mapping[str, str], reader: _Reader) -> int:
    """The host's poison threshold: the app-setting override wins over host.json, as in Azure."""
    key = "azurefunctionsjobhost__extensions__queues__maxdequeuecount"
    for name, _value in env.items():
        if name.lower() == key:
            return int(reader.number(name, minimum=1, maximum=100))
    try:
        return int(_host_json()["extensions"]["queues"].get("maxDequeueCount", 5))
    except (KeyError, ValueError, TypeError, AttributeError):
        return 5


def _function_timeout(env: Mapping[str, str]) -> float | None:
    """host.json functionTimeout in seconds (the app-setting override wins); None when unbounded."""
    value = next((v for k, v in env.items() if k.lower() == "azurefunctionsjobhost__functiontimeout"), None)
    if value is None:
        value = _host_json().get("functionTimeout")
    match = re.fullmatch(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.\d+)?", str(value or "").strip())
    if not match:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    return None if total <= 0 else float(total)


def _deadlines(env: Mapping[str, str], reader: _Reader, graph_timeout: float) -> tuple[float, float]:
    """The delivery deadline and read-back window, checked against each other and functionTimeout.

    A delivery must end (its last writes included) before the host would kill it, which also
    kills every other invocation in that worker; and it must hold one Graph call plus the
    read-back window, or it could never send an invitation.
    """
    deadline = reader.number("DELIVERY_DEADLINE_SECONDS", minimum=30, maximum=3600)
    window = reader.number("READBACK_WINDOW_SECONDS", minimum=0, maximum=600)
    limit = _function_timeout(env)
    if limit is not None and deadline > limit - 60:
        reader.problems.append(
            f"DELIVERY_DEADLINE_SECONDS={deadline:g} must be at least 60 s below functionTimeout ({limit:g} s)"
        )
    if deadline < graph_timeout + window + 30:
        reader.problems.append(
            f"DELIVERY_DEADLINE_SECONDS={deadline:g} must leave room for GRAPH_TIMEOUT_SECONDS plus "
            f"READBACK_WINDOW_SECONDS plus 30 s ({graph_timeout + window + 30:g} s)"
        )
    return deadline, window


def parse_settings(env: Mapping[str, str]) -> Settings:
    """Validate every setting and return them, or raise one SettingsError listing all problems."""
    reader = _Reader(env)
    storage = _storage(reader)
    graph_url, cloud = _graph(reader)
    delays_text = reader.text("GRAPH_RETRY_DELAYS")
    delays: tuple[float, ...] = ()
    try:
        delays = tuple(float(d) for d in delays_text.split(",") if d.strip())
        if not delays or any(d < 0 or d > 300 for d in delays):
            raise ValueError
    except ValueError:
        reader.problems.append(f"GRAPH_RETRY_DELAYS={delays_text!r} must be comma-separated seconds between 0 and 300")
    hosts = tuple(h.strip().lower() for h in reader.text("CALLBACK_ALLOWED_HOSTS").split(",") if h.strip())
    graph_timeout = reader.number("GRAPH_TIMEOUT_SECONDS", minimum=1, maximum=230)
    deadline, window = _deadlines(env, reader, graph_timeout)
    for pattern in hosts:
        if "*" in pattern[2:] or ("*" in pattern and not pattern.startswith("*.")) or any(c in pattern for c in "/:@"):
            reader.problems.append(
                f"CALLBACK_ALLOWED_HOSTS holds {pattern!r}; use a host name or *.domain (any host below domain)"
            )
    allowed_domains = reader.domains("ALLOWED_EMAIL_DOMAINS")
    # The safe default: nobody switches a guest's address to a domain nobody vetted.
    default_grant = frozenset({Capability.SUBMIT} | ({Capability.SWITCH_EMAIL} if allowed_domains else set()))
    allowed_callers = reader.object_ids("ALLOWED_CALLERS")
    settings = Settings(
        storage=storage,
        request_queue=reader.name("RESET_REQUEST_QUEUE", _QUEUE_RE, "queue name (3-56 chars)"),
        result_queue=reader.name("RESET_RESULT_QUEUE", _QUEUE_RE, "queue name (3-56 chars)"),
        status_table=reader.name("RESET_STATUS_TABLE", r"^[A-Za-z][A-Za-z0-9]{2,62}$", "table name"),
        graph_base_url=graph_url,
        graph_cloud=cloud,
        azure_client_id=env.get("AZURE_CLIENT_ID", "").strip() or None,
        invite_redirect_url=_optional_https_url(reader, "INVITE_REDIRECT_URL"),
        send_invitation_message=reader.boolean("SEND_INVITATION_MESSAGE"),
        allowed_email_domains=allowed_domains,
        blocked_email_domains=reader.domains("BLOCKED_EMAIL_DOMAINS"),
        allow_member_reset=reader.boolean("ALLOW_MEMBER_RESET"),
        graph_writes_per_second=reader.number("GRAPH_WRITES_PER_SECOND", minimum=0.1, maximum=1000),
        graph_write_burst=int(reader.number("GRAPH_WRITE_BURST", minimum=1, maximum=3000)),
        graph_retry_delays=delays,
        graph_max_attempts=int(reader.number("GRAPH_MAX_ATTEMPTS", minimum=1, maximum=20)),
        graph_timeout_seconds=graph_timeout,
        callback_allowed_hosts=hosts,
        allowed_callers=allowed_callers,
        # An allowlist of callers only means something when Entra ID vouches for them.
        require_entra_id=reader.boolean("REQUIRE_ENTRA_ID") or bool(allowed_callers),
        key_capabilities=reader.capabilities("KEY_CAPABILITIES", KEY_GRANTABLE, default_grant),
        queue_capabilities=reader.capabilities("QUEUE_CAPABILITIES", QUEUE_GRANTABLE, default_grant),
        redirect_allowed_urls=_redirect_allowlist(reader),
        allow_custom_message_body=reader.boolean("ALLOW_CUSTOM_MESSAGE_BODY"),
        retention_days=int(reader.number("RETENTION_DAYS", minimum=1, maximum=3650)),
        redeem_url_hours=int(reader.number("REDEEM_URL_HOURS", minimum=1, maximum=24 * 30)),
        max_dequeue_count=_max_dequeue_count(env, reader),
        bulk_container=reader.name("BULK_CONTAINER", _CONTAINER_RE, "blob container name (3-63 chars)"),
        bulk_schedule=_schedule(reader, "BULK_SCHEDULE"),
        callback_queue=reader.name("RESET_CALLBACK_QUEUE", _QUEUE_RE, "queue name (3-56 chars)"),
        delivery_deadline_seconds=deadline,
        readback_window_seconds=window,
        sweep_schedule=_schedule(reader, "SWEEP_SCHEDULE"),
        sweep_grace_seconds=reader.number("SWEEP_GRACE_SECONDS", minimum=10, maximum=86_400),
        tenant_id=_tenant_id(reader),
        role_check=_choice(reader, "ROLE_CHECK", ROLE_CHECKS),
        replication_wait_seconds=reader.number("REPLICATION_WAIT_SECONDS", minimum=0, maximum=120),
        invitations_per_minute=reader.number("INVITATIONS_PER_MINUTE", minimum=0.1, maximum=6000),
        breaker_hold_seconds=reader.number("BREAKER_HOLD_SECONDS", minimum=1, maximum=86400),
        state_table=reader.name("RESET_STATE_TABLE", r"^[A-Za-z][A-Za-z0-9]{2,62}$", "table name"),
    )
    if reader.problems:
        raise SettingsError(reader.problems)
    return settings


_cached: Settings | None = None


def get_settings() -> Settings:
    """The app's settings, parsed from the environment on first use and then reused."""
    global _cached
    if _cached is None:
        _cached = parse_settings(os.environ)
    return _cached


def reset_settings() -> None:
    """Forget the parsed settings (tests change the environment between cases)."""
    global _cached
    _cached = None
