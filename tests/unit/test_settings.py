"""Settings: parsed once, every problem listed together, Graph URL safety rule."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shared.platform.errors import SettingsError
from shared.platform.settings import DEFAULTS, GraphCloud, get_settings, parse_settings, reset_settings
from tests.factories import env


def test_defaults_fill_everything_but_storage_and_graph() -> None:
    """A local environment needs only the storage connection; the rest has defaults."""
    parsed = parse_settings({"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    assert parsed.request_queue == "guest-reset-requests"
    assert parsed.poison_queue == "guest-reset-requests-poison"
    assert parsed.result_queue == "guest-reset-results"
    assert parsed.graph_cloud is GraphCloud.GLOBAL
    assert parsed.allow_member_reset is False
    assert "127.0.0.1:10001" in (parsed.storage.connection_string or "")


def test_every_problem_is_listed_in_one_error() -> None:
    """Four bad values give one error naming all four."""
    with pytest.raises(SettingsError) as caught:
        parse_settings(
            {
                "GRAPH_BASE_URL": "https://evil.example.com/v1.0",
                "ALLOW_MEMBER_RESET": "perhaps",
                "GRAPH_WRITES_PER_SECOND": "fast",
                "RESET_REQUEST_QUEUE": "Bad_Queue",
            }
        )
    text = str(caught.value)
    for name in (
        "AzureWebJobsStorage",
        "GRAPH_BASE_URL",
        "ALLOW_MEMBER_RESET",
        "GRAPH_WRITES_PER_SECOND",
        "RESET_REQUEST_QUEUE",
    ):
        assert name in text
    assert len(caught.value.problems) == 5


@pytest.mark.parametrize(
    ("url", "cloud"),
    [
        ("https://graph.microsoft.com/v1.0", GraphCloud.GLOBAL),
        ("https://graph.microsoft.us/v1.0", GraphCloud.US_GOV),
        ("https://dod-graph.microsoft.us/v1.0", GraphCloud.US_GOV),
        ("https://microsoftgraph.chinacloudapi.cn/v1.0", GraphCloud.CHINA),
        ("http://127.0.0.1:8765/v1.0", GraphCloud.EMULATOR),
        ("http://localhost:8765/v1.0", GraphCloud.EMULATOR),
    ],
)
def test_national_clouds_and_loopback_emulator_are_accepted(url: str, cloud: GraphCloud) -> None:
    assert parse_settings(env(GRAPH_BASE_URL=url)).graph_cloud is cloud


@pytest.mark.parametrize(
    "url",
    [
        "http://graph.microsoft.com/v1.0",
        "http://10.0.0.5/v1.0",
        "https://graph.microsoft.com.evil.io/v1.0",
        "https://graph.microsoft.com/",
    ],
)
def test_other_graph_urls_are_refused(url: str) -> None:
    """Tokens only ever go to Microsoft Graph; plain http only to loopback."""
    with pytest.raises(SettingsError, match="GRAPH_BASE_URL"):
        parse_settings(env(GRAPH_BASE_URL=url))


def test_scope_follows_the_cloud() -> None:
    assert parse_settings(env(GRAPH_BASE_URL="https://graph.microsoft.us/v1.0")).graph_scope == (
        "https://graph.microsoft.us/.default"
    )


def test_identity_based_storage_form() -> None:
    """In Azure the storage connection is service URIs plus a managed identity."""
    parsed = parse_settings(
        {
            "AzureWebJobsStorage__queueServiceUri": "https://acct.queue.core.windows.net",
            "AzureWebJobsStorage__tableServiceUri": "https://acct.table.core.windows.net",
            "AzureWebJobsStorage__credential": "managedidentity",
            "AzureWebJobsStorage__clientId": "11111111-2222-3333-4444-555555555555",
        }
    )
    assert parsed.storage.uses_identity
    assert parsed.storage.client_id == "11111111-2222-3333-4444-555555555555"


def test_domains_are_normalised() -> None:
    parsed = parse_settings(env(ALLOWED_EMAIL_DOMAINS=" Contoso.com, @fabrikam.com ", BLOCKED_EMAIL_DOMAINS=""))
    assert parsed.allowed_email_domains == {"contoso.com", "fabrikam.com"}


def test_host_override_of_max_dequeue_count_wins() -> None:
    """The app reads the same poison threshold the host uses, override included."""
    assert parse_settings(env()).max_dequeue_count == 5
    overridden = env(AzureFunctionsJobHost__extensions__queues__maxDequeueCount="3")
    assert parse_settings(overridden).max_dequeue_count == 3


def test_settings_are_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """get_settings caches; reset_settings forgets."""
    reset_settings()
    monkeypatch.setattr(os, "environ", env(RESET_RESULT_QUEUE="first-results"))
    assert get_settings().result_queue == "first-results"
    monkeypatch.setattr(os, "environ", env(RESET_RESULT_QUEUE="second-results"))
    assert get_settings().result_queue == "first-results"
    reset_settings()
    assert get_settings().result_queue == "second-results"
    reset_settings()


def test_sample_settings_mirror_the_defaults() -> None:
    """local.settings.sample.json lists every setting with the code's default."""
    sample = json.loads((Path(__file__).resolve().parents[2] / "local.settings.sample.json").read_text())
    values = sample["Values"]
    for name, default in DEFAULTS.items():
        assert name in values, name
        if name != "GRAPH_BASE_URL":  # locally it points at the emulator
            assert values[name] == default, name
    parse_settings(values)


async def test_concurrent_first_calls_share_one_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cold batch of invocations builds the clients once, not once per message."""
    import asyncio

    from shared.reset import runtime as runtime_module

    built: list[object] = []

    async def factory(settings: object) -> runtime_module.Runtime:
        await asyncio.sleep(0.01)  # building awaits (creating queues and tables)
        built.append(settings)
        return object()  # type: ignore[return-value]

    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    runtime_module.set_runtime_factory(factory)
    reset_settings()
    try:
        results = await asyncio.gather(*(runtime_module.get_runtime() for _ in range(16)))
    finally:
        runtime_module.set_runtime_factory(None)
        reset_settings()
    assert len(built) == 1
    assert all(r is results[0] for r in results)


@pytest.mark.parametrize(
    ("url", "tenant", "expected"),
    [
        ("https://graph.microsoft.com/v1.0", "", "https://myapps.microsoft.com"),
        (
            "https://graph.microsoft.com/v1.0",
            "72F988BF-86F1-41AF-91AB-2D7CD011DB47",
            "https://myapps.microsoft.com?tenantId=72f988bf-86f1-41af-91ab-2d7cd011db47",
        ),
        ("https://graph.microsoft.us/v1.0", "", "https://myapps.microsoft.us"),
        ("https://microsoftgraph.chinacloudapi.cn/v1.0", "", "https://myapplications.windowsazure.cn"),
    ],
)
def test_default_redirect_is_the_clouds_my_apps_in_the_tenant(url: str, tenant: str, expected: str) -> None:
    """With no INVITE_REDIRECT_URL the guest lands on its cloud's My Apps, opened in the tenant when known."""
    parsed = parse_settings(env(GRAPH_BASE_URL=url, AZURE_TENANT_ID=tenant))
    assert parsed.invite_redirect_url is None
    assert parsed.my_apps_url(None) == expected


def test_the_token_tenant_is_used_when_the_setting_is_empty() -> None:
    parsed = parse_settings(env(GRAPH_BASE_URL="https://graph.microsoft.com/v1.0"))
    assert parsed.my_apps_url("t-from-token") == "https://myapps.microsoft.com?tenantId=t-from-token"


def test_new_settings_are_validated() -> None:
    """A tenant that is not a GUID, an unknown role check and a zero pace are all reported."""
    with pytest.raises(SettingsError) as caught:
        parse_settings(env(AZURE_TENANT_ID="contoso.com", ROLE_CHECK="memberOf", INVITATIONS_PER_MINUTE="0"))
    text = str(caught.value)
    assert "AZURE_TENANT_ID" in text and "ROLE_CHECK" in text and "INVITATIONS_PER_MINUTE" in text


def test_beta_root_is_the_same_host() -> None:
    """The transitive role check reads /beta on the cloud's own Graph host."""
    parsed = parse_settings(env(GRAPH_BASE_URL="https://graph.microsoft.us/v1.0"))
    assert parsed.graph_beta_url == "https://graph.microsoft.us/beta"
