"""Retention: finished status records are deleted after RETENTION_DAYS, unclaimed redeem URLs after REDEEM_URL_HOURS."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.platform.logs import app_logger
from shared.reset.runtime import Runtime, get_runtime
from shared.reset.status import utcnow

log = app_logger()


@dataclass(frozen=True)
class Purged:
    records: int
    redeem_urls: int


async def purge(runtime: Runtime, *, now: datetime | None = None) -> Purged:
    """One retention pass over the status table (conditional deletes: a replayed record stays)."""
    now = now or utcnow()
    settings = runtime.settings
    records, links = await runtime.status.purge(
        finished_before=now - timedelta(days=settings.retention_days),
        links_before=now - timedelta(hours=settings.redeem_url_hours),
    )
    log.info("retention: %d finished record(s) deleted, %d unclaimed redeem URL(s) erased", records, links)
    return Purged(records, links)


async def run_retention() -> Purged:
    """The timer trigger's entry point."""
    return await purge(await get_runtime())
