"""Synchronous client for the emulator's ``/_emulator`` control API (tests, benchmarks, demos)."""

from __future__ import annotations

from types import TracebackType
from typing import Any, cast
from urllib.parse import quote

import httpx

JsonDict = dict[str, Any]


class EmulatorControlError(RuntimeError):
    """The emulator rejected a control call; the message carries its explanation."""


def root_url_of(base_url: str) -> str:
    """Accept ``http://host:port`` or the Graph base ``http://host:port/v1.0``."""
    root = base_url.rstrip("/")
    return root[: -len("/v1.0")] if root.endswith("/v1.0") else root


class EmulatorControl:
    """Drive a running emulator: users, faults, chaos, latency, write budget, journal."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.root_url = root_url_of(base_url)
        self.base_url = self.root_url + "/v1.0"
        self._http = httpx.Client(base_url=self.root_url + "/_emulator", timeout=timeout)

    def close(self) -> None:
        """Close the HTTP connection pool (the emulator keeps running)."""
        self._http.close()

    def __enter__(self) -> EmulatorControl:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, method: str, path: str, json: Any = None, params: dict[str, str] | None = None) -> Any:
        response = self._http.request(method, path, json=json, params=params)
        if response.status_code >= 400:
            raise EmulatorControlError(f"{method} /_emulator{path} -> {response.status_code}: {response.text}")
        return response.json()

    # state -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Reload the fixture; clear journal, faults, chaos, latency, write budget, replication lag;
        restore the configured app permissions."""
        self._call("POST", "/reset")

    def set_users(self, users: list[JsonDict]) -> None:
        """Replace the whole directory (emulator-only ``_`` fields allowed)."""
        self._call("PUT", "/users", json=users)

    def put_user(self, user: JsonDict) -> JsonDict:
        """Add or replace one user; returns the stored copy."""
        return cast(JsonDict, self._call("POST", "/users", json=user))

    def user(self, user_id: str) -> JsonDict:
        """One stored user by id or UPN, including ``_invitationCount`` and friends."""
        # quote: guest UPNs contain '#', which would otherwise start a URL fragment.
        return cast(JsonDict, self._call("GET", f"/users/{quote(user_id, safe='@')}"))

    def users(self) -> list[JsonDict]:
        """Every stored user, emulator-only fields included, in directory order."""
        return cast(list[JsonDict], self._call("GET", "/users"))

    # injected behaviour -------------------------------------------------------------------

    def add_fault(
        self,
        *,
        method: str | None,
        path: str,
        status: int | None,
        times: int | None = 1,
        retry_after: str | float | None = None,
        code: str | None = None,
        message: str | None = None,
        latency_ms: float = 0,
        drop: bool = False,
        after_processing: bool = False,
    ) -> JsonDict:
        """Add a rule; ``path`` is a regex searched in the path after ``/v1.0``."""
        return cast(
            JsonDict,
            self._call(
                "POST",
                "/faults",
                json={
                    "method": method,
                    "path": path,
                    "status": status,
                    "times": times,
                    "retryAfter": None if retry_after is None else str(retry_after),
                    "code": code,
                    "message": message,
                    "latencyMs": latency_ms,
                    "drop": drop,
                    "afterProcessing": after_processing,
                },
            ),
        )

    def clear_faults(self) -> None:
        """Remove every fault rule (chaos and write budget are separate)."""
        self._call("DELETE", "/faults")

    def set_chaos(
        self,
        *,
        p429: float = 0.0,
        p503: float = 0.0,
        p504: float = 0.0,
        p_drop: float = 0.0,
        retry_after: str | float | None = None,
        seed: int | None = None,
    ) -> JsonDict:
        """Random faults on Graph routes; all probabilities zero switches chaos off."""
        return cast(
            JsonDict,
            self._call(
                "POST",
                "/chaos",
                json={
                    "p429": p429,
                    "p503": p503,
                    "p504": p504,
                    "pDrop": p_drop,
                    "retryAfter": None if retry_after is None else str(retry_after),
                    "seed": seed,
                },
            ),
        )

    def set_latency(self, ms: float) -> None:
        """Delay every Graph request by ``ms`` milliseconds (0 = off)."""
        self._call("POST", "/latency", json={"ms": ms})

    def set_stale_reads(self, count: int) -> None:
        """Replication lag: after each reset invitation, the next ``count`` reads of that user
        (by id or UPN) return it as it was before the invitation."""
        self._call("POST", "/stale-reads", json={"count": count})

    def set_replication_lag(
        self, seconds: float, *, reads: bool = True, index: bool = True, invitations: bool = True
    ) -> None:
        """Replication lag after PATCH: for ``seconds``, reads of the user, advanced queries
        (ConsistencyLevel: eventual) and the invitation's email check see it as before the PATCH."""
        self._call(
            "POST",
            "/replication-lag",
            json={"seconds": seconds, "reads": reads, "index": index, "invitations": invitations},
        )

    def set_app_permissions(self, permissions: list[str]) -> None:
        """The Graph application permissions the app holds (until reset); others' calls get 403."""
        self._call("POST", "/app-permissions", json={"permissions": permissions})

    def set_role_assignments(self, assignments: list[JsonDict], groups: list[JsonDict] | None = None) -> None:
        """Replace the directory's role assignments (and, when given, its groups with their members)."""
        body: JsonDict = {"roleAssignments": assignments}
        if groups is not None:
            body["groups"] = groups
        self._call("PUT", "/role-assignments", json=body)

    def set_write_budget(
        self, per_second: float | None, burst: float | None = None, retry_after: str | float | None = None
    ) -> None:
        """Token bucket over Graph writes; ``per_second=None`` switches it off."""
        body = (
            None
            if per_second is None
            else {
                "perSecond": per_second,
                "burst": burst,
                "retryAfter": None if retry_after is None else str(retry_after),
            }
        )
        self._call("POST", "/write-budget", json=body)

    # journal -----------------------------------------------------------------------------

    def journal(
        self, method: str | None = None, path_contains: str | None = None, since: int | None = None
    ) -> list[JsonDict]:
        """Recorded Graph requests, oldest first; ``since`` keeps entries with a larger seq."""
        params = {
            k: v
            for k, v in (
                ("method", method),
                ("pathContains", path_contains),
                ("since", None if since is None else str(since)),
            )
            if v
        }
        return cast(list[JsonDict], self._call("GET", "/journal", params=params))

    def clear_journal(self) -> None:
        """Forget recorded requests; sequence numbers keep counting up."""
        self._call("DELETE", "/journal")

    def invitations(self) -> list[JsonDict]:
        """Journal entries of ``POST /invitations`` that really created an invitation.

        That includes requests answered with an ``afterProcessing`` fault (the caller saw a
        504 or a dropped connection, but the invitation exists) — the case that causes
        duplicate invitation emails.
        """
        return [
            e
            for e in self.journal(method="POST", path_contains="/invitations")
            if e["path"] == "/invitations" and e["processed"]
        ]
