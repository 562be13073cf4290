"""Per-store settings (today: the time zone its times are shown in)."""

from __future__ import annotations

import logging
import time

from sqlalchemy import Engine, insert, update

from backoffice.web import tables as w

__all__ = ["set_site_tz"]

log = logging.getLogger(__name__)


def set_site_tz(engine: Engine, site: str, tz: str, by: str) -> None:
    """Show the times of ``site`` in ``tz`` (an IANA name the caller has checked)."""
    s = w.site_settings.c
    now = time.time()
    with engine.begin() as conn:
        if not conn.execute(
            update(w.site_settings).where(s.site == site).values(tz=tz, updated=now, updated_by=by)
        ).rowcount:
            conn.execute(insert(w.site_settings).values(site=site, tz=tz, updated=now, updated_by=by))
    log.info("store %s: time zone %s (set by %s)", site, tz, by)
