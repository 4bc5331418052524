"""Least power and the other security rules that need no storage: capabilities, callers, hosts, redirects, masking."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from shared.api.openapi import document
from shared.api.principal import caller_from_headers, resolve_access
from shared.platform.errors import AccessDeniedError, SettingsError
from shared.platform.logs import mask_url_secrets, redact
from shared.platform.settings import Capability, parse_settings
from shared.reset import capabilities, policy
from shared.reset.callbacks import callback_allowed, resolves_to_public_addresses
from shared.reset.contract import ResetRequest
from shared.reset.status import Status, StatusRecord, _to_entity, stored_form
from tests.factories import GUEST_ID, env, settings

OID = "0f0f0f0f-1111-4222-8333-444444444444"
APP_ID = "a1a1a1a1-2222-4333-8444-555555555555"
LOGIC_APP = "https://prod-07.westeurope.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke"
SIGNED = f"{LOGIC_APP}?api-version=2016-10-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=s3cr3tSignature"


def request(**fields: Any) -> ResetRequest:
    return ResetRequest.model_validate({"userId": GUEST_ID, **fields})


def principal(*roles: str, **claims: str) -> dict[str, str]:
    data = {
        "auth_typ": "aad",
        "role_typ": "http://schemas.microsoft.com/ws/2008/06/identity/claims/role",
        "claims": [{"typ": k, "val": v} for k, v in claims.items()] + [{"typ": "roles", "val": r} for r in roles],
    }
    return {"X-MS-CLIENT-PRINCIPAL": base64.b64encode(json.dumps(data).encode()).decode()}


# --- capabilities and their safe defaults -----------------------------------------------------


def test_function_keys_and_the_queue_get_a_plain_reset_by_default() -> None:
    """Safe defaults: no email switch, no message options, no reads beyond one's own, no links."""
    parsed = parse_settings(env(KEY_CAPABILITIES="", QUEUE_CAPABILITIES=""))
    assert parsed.key_capabilities == {Capability.SUBMIT}
    assert parsed.queue_capabilities == {Capability.SUBMIT}
    assert parsed.require_entra_id is False and parsed.allow_custom_message_body is False
    assert parsed.redirect_allowlist == ("https://myapps.microsoft.com",)  # the cloud's My Apps


def test_an_allowed_domain_list_turns_the_email_switch_on_by_default() -> None:
    """With ALLOWED_EMAIL_DOMAINS set, switching to a vetted domain is part of the default grant."""
    parsed = parse_settings(env(KEY_CAPABILITIES="", QUEUE_CAPABILITIES="", ALLOWED_EMAIL_DOMAINS="contoso.com"))
    assert parsed.key_capabilities == parsed.queue_capabilities == {Capability.SUBMIT, Capability.SWITCH_EMAIL}


def test_explicit_grants_replace_the_default_and_none_grants_nothing() -> None:
    parsed = parse_settings(env(KEY_CAPABILITIES="reset.submit, Reset.ReadAll", QUEUE_CAPABILITIES="none"))
    assert parsed.key_capabilities == {Capability.SUBMIT, Capability.READ_ALL}
    assert parsed.queue_capabilities == frozenset()


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("KEY_CAPABILITIES", "Reset.Everything", "not a capability"),
        ("KEY_CAPABILITIES", "Reset.Operate", "cannot grant Reset.Operate"),
        ("QUEUE_CAPABILITIES", "Reset.ReadRedeemUrl", "cannot grant Reset.ReadRedeemUrl"),
        ("ALLOWED_CALLERS", "helpdesk-flow@fabrikam.com", "not an object or application id"),
        ("CALLBACK_ALLOWED_HOSTS", "prod-*.logic.azure.com", "use a host name or *.domain"),
        ("REDIRECT_ALLOWED_URLS", "http://myapps.microsoft.com", "not an https URL"),
    ],
)
def test_grants_and_allowlists_that_cannot_be_honoured_are_setting_errors(name: str, value: str, problem: str) -> None:
    with pytest.raises(SettingsError) as caught:
        parse_settings(env(**{name: value}))
    assert any(name in p and problem in p for p in caught.value.problems)


def test_a_plain_reset_needs_submit_alone() -> None:
    needs = capabilities.needs(request(sendInvitationMessage=True, messageLanguage="de-DE"), settings())
    assert [n.capability for n in needs] == [Capability.SUBMIT]


@pytest.mark.parametrize(
    ("fields", "capability", "field"),
    [
        ({"newEmail": "adele@new.example"}, Capability.SWITCH_EMAIL, "newEmail"),
        ({"ccRecipients": ["boss@contoso.com"]}, Capability.MESSAGE_OPTIONS, "ccRecipients"),
        ({"inviteRedirectUrl": "https://apps.contoso.com/"}, Capability.MESSAGE_OPTIONS, "inviteRedirectUrl"),
        ({"customizedMessageBody": "hi"}, Capability.MESSAGE_OPTIONS, "customizedMessageBody"),
    ],
)
def test_each_risky_field_needs_its_capability(fields: dict[str, Any], capability: Capability, field: str) -> None:
    """Without the capability the request is refused, naming the field and the capability."""
    lacking = capabilities.missing(request(**fields), {Capability.SUBMIT}, settings())
    assert [(n.capability, n.field) for n in lacking] == [(capability, field)]
    with pytest.raises(Exception, match=capability.value) as caught:
        capabilities.require(request(**fields), {Capability.SUBMIT}, settings(), channel="the queue")
    assert getattr(caught.value, "code", None) == "CapabilityMissing"


def test_the_default_redirect_given_explicitly_needs_no_capability() -> None:
    plain = request(inviteRedirectUrl=settings().default_redirect + "/")
    assert capabilities.missing(plain, {Capability.SUBMIT}, settings()) == []


def test_intakes_grant_holds_only_for_the_message_intake_enqueued() -> None:
    """A forged message under a granted requestId is judged with the queue's grant instead."""
    text = json.dumps({"userId": GUEST_ID, "newEmail": "a@new.example", "requestId": "r1", "callbackUrl": SIGNED})
    record = StatusRecord(
        request_id="r1",
        status=Status.ACCEPTED,
        granted="Reset.SwitchEmail,Reset.Submit",
        request_json=stored_form(text),
        message_hash=capabilities.message_hash(text.encode()),
    )
    queue_grant = settings(QUEUE_CAPABILITIES="Reset.Submit").queue_capabilities
    same, _ = capabilities.grant_for(record, text.encode(), settings(QUEUE_CAPABILITIES="Reset.Submit"))
    replay, _ = capabilities.grant_for(record, stored_form(text).encode(), settings(QUEUE_CAPABILITIES="Reset.Submit"))
    forged_text = text.replace("a@new.example", "mallory@evil.example")
    forged, who = capabilities.grant_for(record, forged_text.encode(), settings(QUEUE_CAPABILITIES="Reset.Submit"))
    assert Capability.SWITCH_EMAIL in same and Capability.SWITCH_EMAIL in replay
    assert forged == queue_grant and "QUEUE_CAPABILITIES" in who


# --- callers ----------------------------------------------------------------------------------


def test_roles_and_immutable_ids_are_read_from_the_principal() -> None:
    caller = caller_from_headers(
        principal("Reset.Submit", "Reset.ReadAll", oid=OID, appid=APP_ID, preferred_username="flow@fabrikam.com")
    )
    assert caller is not None
    assert caller.roles == {"Reset.Submit", "Reset.ReadAll"}
    assert caller.ids == {OID, APP_ID} and caller.owner == f"entra:{OID}" and caller.audit_id == OID


def test_allowed_callers_match_object_ids_never_names() -> None:
    """A caller named like an allowed one but with another object id is refused."""
    strict = settings(ALLOWED_CALLERS=OID)
    assert resolve_access(principal("Reset.Submit", oid=OID), strict).owner == f"entra:{OID}"
    assert resolve_access(principal(oid="99999999-0000-4000-8000-000000000000", appid=OID), strict).caller
    with pytest.raises(AccessDeniedError) as caught:
        resolve_access(principal(oid="99999999-0000-4000-8000-000000000000", preferred_username=OID), strict)
    assert caught.value.status == 403


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-MS-CLIENT-PRINCIPAL": "not base64!"}, {"X-MS-CLIENT-PRINCIPAL-NAME": "someone@fabrikam.com"}],
)
def test_without_a_principal_entra_mode_answers_401(headers: dict[str, str]) -> None:
    with pytest.raises(AccessDeniedError) as caught:
        resolve_access(headers, settings(REQUIRE_ENTRA_ID="true"))
    assert caught.value.status == 401


def test_capabilities_behind_entra_id_are_the_tokens_roles() -> None:
    access = resolve_access(
        principal("Reset.Submit", "Reset.Operate", "Other.Role", oid=OID), settings(ALLOWED_CALLERS=OID)
    )
    assert access.capabilities == {Capability.SUBMIT, Capability.OPERATE}
    assert access.may_read(f"entra:{OID}") and not access.may_read("key") and not access.may_read(None)


def test_forged_principal_headers_are_ignored_with_function_keys() -> None:
    """Without Entra ID in front the headers are not trustworthy: the key's grant, nothing more."""
    access = resolve_access(principal(*(c.value for c in Capability), oid=OID), settings(KEY_CAPABILITIES=""))
    assert access.owner == "key" and access.capabilities == {Capability.SUBMIT} and access.caller is None


# --- callback hosts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        SIGNED,
        "https://prod-07.westeurope.logic.azure.com./hook",
        "https://PROD-07.WestEurope.Logic.Azure.com/hook",
    ],
)
def test_callbacks_to_allowlisted_hosts_pass(url: str) -> None:
    assert callback_allowed(url, settings())


@pytest.mark.parametrize(
    "url",
    [
        "http://prod-07.westeurope.logic.azure.com/hook",  # not https
        "https://user@prod-07.westeurope.logic.azure.com/hook",  # userinfo
        "https://prod-07.westeurope.logic.azure.com@evil.example/hook",  # userinfo hiding the real host
        "https://prod-07.westeurope.ｌｏｇｉｃ.azure.com/hook",  # full-width letters
        "https://prod-07.westeurope.logic\uff0eazure.com/hook",  # full-width dot
        "https://evil.example\uff0f.logic.azure.com/hook",  # full-width solidus
        "https://logic.azure.com/hook",  # *.domain is below the domain, not the domain
        "https://evillogic.azure.com/hook",  # suffix not bounded by a dot
        "https://prod.logic.azure.com.evil.example/hook",
        "https://evil.example\\.logic.azure.com/hook",  # backslash
        "https://prod.logic.azure.com:port/hook",
        "https://prod%2elogic.azure.com/hook",
        "https://prod.logic.azure.com\u200b/hook",  # zero-width space
    ],
)
def test_look_alike_and_userinfo_callback_hosts_are_refused(url: str) -> None:
    assert not callback_allowed(url, settings())


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://169.254.169.254/metadata",
        "https://10.1.2.3/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[fe80::1]/hook",
        "https://localhost/hook",
    ],
)
async def test_private_and_link_local_destinations_are_refused_after_resolution(url: str) -> None:
    assert not await resolves_to_public_addresses(url)


async def test_a_public_destination_passes_the_resolution_check() -> None:
    assert await resolves_to_public_addresses("https://20.50.2.1/hook")


# --- request rules --------------------------------------------------------------------------


def test_custom_message_body_is_refused_unless_an_operator_opts_in() -> None:
    """Graph drops it for app-only invitations; the caller is told what to do instead."""
    [refusal] = policy.request_refusals(request(customizedMessageBody="Welcome back"), settings())
    assert (refusal.field, refusal.code) == ("customizedMessageBody", "CustomMessageNotSupported")
    assert refusal.message == (
        "customizedMessageBody is dropped by Graph for app-only invitations; "
        "send your own email with the redeem URL instead"
    )
    assert policy.request_refusals(request(customizedMessageBody="x"), settings(ALLOW_CUSTOM_MESSAGE_BODY="true")) == []


def test_message_language_with_a_custom_body_is_refused() -> None:
    both = request(customizedMessageBody="x", messageLanguage="de-DE")
    [refusal] = policy.request_refusals(both, settings(ALLOW_CUSTOM_MESSAGE_BODY="true"))
    assert refusal.field == "messageLanguage" and "ignored" in refusal.message


def test_every_address_the_invitation_touches_obeys_the_domain_rules() -> None:
    """newEmail and cc are both checked; the message names the setting, never its value."""
    rules = settings(ALLOWED_EMAIL_DOMAINS="contoso.com", BLOCKED_EMAIL_DOMAINS="evil.example")
    found = policy.request_refusals(request(newEmail="adele@gmail.example", ccRecipients=["spy@evil.example"]), rules)
    assert [(r.field, r.code) for r in found] == [
        ("newEmail", "EmailDomainNotAllowed"),
        ("ccRecipients[0]", "EmailDomainBlocked"),
    ]
    assert all("contoso.com" not in r.message for r in found)
    assert policy.request_refusals(request(newEmail="adele@contoso.com", ccRecipients=["it@contoso.com"]), rules) == []


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://myapps.microsoft.com", True),
        ("https://myapps.microsoft.com/?tenantId=abc", True),  # an entry without a query admits any
        ("https://myapps.microsoft.com/apps", True),
        ("https://myapps.microsoft.com.evil.example", False),
        ("https://evil.example/?u=https://myapps.microsoft.com", False),
        ("https://user@myapps.microsoft.com", False),
        ("https://myapps.microsoft.com:8443", False),
        ("https://myapps.microsoft.community/x", False),
    ],
)
def test_redirects_come_from_the_allowlist(url: str, allowed: bool) -> None:
    """Same host and port as an entry, its path or below it; userinfo never."""
    assert policy.redirect_allowed(url, ("https://myapps.microsoft.com",)) is allowed
    refused = policy.request_refusals(request(inviteRedirectUrl=url), settings())
    assert (refused == []) is allowed


def test_a_tenant_redirect_entry_admits_exactly_its_tenant() -> None:
    allowlist = ("https://myapps.microsoft.com/?tenantId=11111111-1111-1111-1111-111111111111",)
    assert policy.redirect_allowed(
        "https://myapps.microsoft.com?tenantId=11111111-1111-1111-1111-111111111111", allowlist
    )
    assert not policy.redirect_allowed(
        "https://myapps.microsoft.com?tenantId=22222222-2222-2222-2222-222222222222", allowlist
    )


# --- data at rest and in answers --------------------------------------------------------------


def test_an_address_without_a_local_part_is_masked_not_crashed_on() -> None:
    """Found by the queue fuzz: "@contoso.com" made the poison handler drop the message."""
    from shared.platform.logs import mask_email

    assert mask_email("@contoso.com") == "***@contoso.com"


def test_callback_secrets_are_masked_at_rest_and_in_free_text() -> None:
    assert "s3cr3t" not in mask_url_secrets(SIGNED) and mask_url_secrets(SIGNED).startswith(LOGIC_APP + "?")
    assert "s3cr3t" not in redact(f"posting to {SIGNED} failed")
    text = json.dumps({"userId": GUEST_ID, "callbackUrl": SIGNED})
    assert "s3cr3t" not in stored_form(text) and stored_form(stored_form(text)) == stored_form(text)


def test_a_record_keeps_what_replay_and_audit_need_and_no_more() -> None:
    """Failed: the request (secret masked) for replay; Succeeded: no copy; Graph's text redacted."""
    failed = StatusRecord(
        request_id="r",
        status=Status.FAILED,
        request_json=json.dumps({"userId": GUEST_ID, "callbackUrl": SIGNED}),
        error_message="The email adele.vance@contoso.com doesn't match any emails on the user object.",
    )
    failed = StatusRecord(**{**failed.__dict__, "history": failed.with_event("poisoned", message=failed.error_message)})
    entity = _to_entity(failed)
    assert "s3cr3t" not in entity["RequestJson"] and GUEST_ID in entity["RequestJson"]
    assert "adele.vance@" not in entity["ErrorMessage"] and "adele.vance@" not in entity["History"]
    assert "adele.vance@" not in json.dumps(failed.public())
    succeeded = StatusRecord(request_id="r", status=Status.SUCCEEDED, request_json="{}", redeem_url="https://x/redeem")
    assert "RequestJson" not in _to_entity(succeeded) and "redeemUrl" not in succeeded.public()


def test_setting_problems_shown_to_callers_name_settings_never_values() -> None:
    with pytest.raises(SettingsError) as caught:
        parse_settings(env(GRAPH_BASE_URL="https://graph.attacker.example/v1.0", ALLOWED_CALLERS="x@y.example"))
    public = " ".join(caught.value.public_problems())
    assert "GRAPH_BASE_URL" in public and "ALLOWED_CALLERS" in public
    assert "attacker" not in public and "x@y.example" not in public


# --- the contract the connector is built from -------------------------------------------------


def test_every_refusal_the_api_documents_is_a_problem_document() -> None:
    """Each 4xx/5xx response refers to Problem (health's 503 to Health), and problem+json is declared."""
    doc = document("example.test")
    assert "application/problem+json" in doc["produces"]
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if int(status) >= 400 and not (path == "/health" and status == "503"):
                    assert answer["schema"] == {"$ref": "#/definitions/Problem"}, (path, method, status)
            assert {"401", "403"} <= set(operation["responses"]), (path, method)
    links = doc["paths"]["/resets"]["post"]["responses"]["202"]["x-links"]
    assert links["GetResetStatus"]["operationId"] == "GetResetStatus"
    assert set(doc["definitions"]["Health"]["properties"]) == {"status", "problems"}
