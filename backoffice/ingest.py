"""One batch of messages → one transaction: the ledger, the derived tables, the figures.

:meth:`Ingest.store` is the whole write path; the collector acknowledges the batch only after it
returns. Inside the transaction, in this order:

1. devices and epochs get their ids (created on first sight); on PostgreSQL the batch's device rows are
   locked (``FOR UPDATE``, in id order), so two collectors settle one device's figures one at a time;
2. the ledger: ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` on (epoch, seq). What was not inserted is
   a duplicate (same payload: nothing to do) or a **conflict** (another payload: kept in ``conflicts``,
   never overwriting, one log line). A copy of a message already removed by retention is *expired*;
3. per epoch: the seq range and its gaps (a late message shrinks or closes a gap), the epoch message;
4. crossings, command results, alerts and status;
5. counts periods and the hourly roll-up (:mod:`backoffice.figures`) — only for messages inserted now,
   so a redelivered message can never be counted twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, select, text, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from backoffice import bulk
from backoffice import tables as t
from backoffice.figures import OPEN_GAPS, EpochState, Period, Settler, flat, load_epochs
from backoffice.protocol import Message, Rejection

__all__ = ["Ingest", "Outcome"]

log = logging.getLogger(__name__)

RAW_KEEP = 4096  # bytes of a rejected message kept
Key = tuple[int, int]  # epoch_id, seq


@dataclass
class Outcome:
    """What one batch did."""

    stored: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0
    expired: int = 0
    status: int = 0
    conflict_lines: list[str] = field(default_factory=list)


def _insert(conn: Connection, table: t.Table) -> Any:
    """The dialect's INSERT (for ON CONFLICT)."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


class Ingest:
    """Stores batches; keeps the ids of devices and epochs it has seen committed.

    Args:
        engine: a writer engine (:func:`backoffice.db.make_engine` with ``writer=True``).
        hook: called with a point name inside the transaction (fault injection in tests).
    """

    def __init__(self, engine: Engine, hook: Callable[[str], None] | None = None) -> None:
        self.engine = engine
        self.hook = hook or (lambda point: None)
        self._devices: dict[tuple[str, str], int] = {}
        self._epochs: dict[tuple[int, str], int] = {}
        self._keys: dict[tuple[str, str, str], int] = {}

    def store(self, batch: Sequence[Message | Rejection]) -> Outcome:
        """Store a batch in one transaction.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: nothing of the batch was stored; the caller retries.
        """
        out = Outcome()
        new_devices: dict[tuple[str, str], int] = {}
        new_epochs: dict[tuple[int, str], int] = {}
        with self.engine.begin() as conn:
            work = _Batch(self, conn, out, new_devices, new_epochs)
            work.run(batch)
        # Ids learnt in a transaction are trusted only once it has committed.
        self._devices.update(new_devices)
        self._epochs.update(new_epochs)
        self._keys.update(work.new_keys)
        return out


class _Batch:
    """The work of one transaction (a class only to share its state between the steps)."""

    def __init__(
        self,
        ingest: Ingest,
        conn: Connection,
        out: Outcome,
        new_devices: dict[tuple[str, str], int],
        new_epochs: dict[tuple[int, str], int],
    ) -> None:
        self.ingest, self.conn, self.out = ingest, conn, out
        self.devices = dict(ingest._devices)
        self.epoch_ids = dict(ingest._epochs)
        self.new_devices, self.new_epochs = new_devices, new_epochs
        self.keys = dict(ingest._keys)
        self.new_keys: dict[tuple[str, str, str], int] = {}
        self.epochs: dict[int, EpochState] = {}

    # --- the steps ---------------------------------------------------------------------------------

    def run(self, batch: Sequence[Message | Rejection]) -> None:
        msgs = [m for m in batch if isinstance(m, Message)]
        rejections = [m for m in batch if isinstance(m, Rejection)]
        device_ids = self._device_ids({(m.site, m.device) for m in msgs})
        keyed = [m for m in msgs if m.keyed]
        parents = {
            (m.site, m.device, m.body["previous"]["epoch"])
            for m in keyed
            if m.kind == "epoch" and m.body.get("previous")
        }
        wanted = {(device_ids[(m.site, m.device)], m.epoch) for m in keyed}
        wanted |= {(device_ids[(s, d)], e) for s, d, e in parents}
        epoch_ids = self._epoch_ids(wanted, min((m.received for m in keyed), default=time.time()))
        self._lock(sorted(set(device_ids.values())))
        self.epochs = load_epochs(self.conn, set(epoch_ids.values()))
        settler = Settler(self.conn, self.epochs)
        self._load_children(settler)
        fresh = self._ledger(keyed, device_ids, epoch_ids)
        self.ingest.hook("mid-batch")
        breaks_before = {i: e.is_break for i, e in self.epochs.items()}
        self._sequences(fresh)
        changed = self._epoch_messages([m for _, m in fresh if m.kind == "epoch"], device_ids)
        self._refresh_parents()
        self._crossings([(k, m) for k, m in fresh if m.kind == "crossing"], device_ids)
        self._command_results([(k, m) for k, m in fresh if m.kind == "cmd_result"], device_ids)
        self._alerts([(k, m) for k, m in fresh if m.kind in ("alert", "source_alert")], device_ids)
        self._status([m for m in msgs if not m.keyed], device_ids)
        self._counts([(k, m) for k, m in fresh if m.kind == "counts"], device_ids, settler)
        self._links(settler, fresh, breaks_before, changed)
        self._events_in_open_spans(settler, [(k, m) for k, m in fresh if m.kind == "crossing"], device_ids)
        for epoch_id in sorted(settler.transitions):
            settler.transition(settler.epoch(epoch_id))
        self._hourly(settler)
        self._write_epochs()
        self._rejected(rejections)
        self.out.rejected = len(rejections)

    def _device_ids(self, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
        d = t.devices.c
        missing = [p for p in pairs if p not in self.devices]
        if missing:
            for r in self.conn.execute(
                select(d.id, d.site, d.device).where(tuple_(d.site, d.device).in_(missing))
            ):
                self.devices[(r.site, r.device)] = self.new_devices[(r.site, r.device)] = r.id
            todo = [p for p in missing if p not in self.devices]
            if todo:
                rows = [{"site": s, "device": dv, "first_seen": _now()} for s, dv in todo]
                self.conn.execute(_insert(self.conn, t.devices).on_conflict_do_nothing(), rows)
                for r in self.conn.execute(
                    select(d.id, d.site, d.device).where(tuple_(d.site, d.device).in_(todo))
                ):
                    self.devices[(r.site, r.device)] = self.new_devices[(r.site, r.device)] = r.id
        return {p: self.devices[p] for p in pairs}

    def _epoch_ids(self, pairs: set[tuple[int, str]], first_seen: float) -> dict[tuple[int, str], int]:
        e = t.epochs.c
        missing = [p for p in pairs if p not in self.epoch_ids]
        if missing:
            sel = select(e.id, e.device_id, e.epoch)
            for r in self.conn.execute(sel.where(tuple_(e.device_id, e.epoch).in_(missing))):
                self.epoch_ids[(r.device_id, r.epoch)] = self.new_epochs[(r.device_id, r.epoch)] = r.id
            todo = [p for p in missing if p not in self.epoch_ids]
            if todo:
                rows = [{"device_id": dv, "epoch": ep, "first_seen": first_seen or _now()} for dv, ep in todo]
                self.conn.execute(_insert(self.conn, t.epochs).on_conflict_do_nothing(), rows)
                for r in self.conn.execute(sel.where(tuple_(e.device_id, e.epoch).in_(todo))):
                    self.epoch_ids[(r.device_id, r.epoch)] = self.new_epochs[(r.device_id, r.epoch)] = r.id
        return {p: self.epoch_ids[p] for p in pairs}

    def _lock(self, device_ids: list[int]) -> None:
        if self.conn.dialect.name == "postgresql" and device_ids:
            d = t.devices.c
            self.conn.execute(select(d.id).where(d.id.in_(device_ids)).order_by(d.id).with_for_update())

    def _load_children(self, settler: Settler) -> None:
        for ep in list(self.epochs.values()):
            if ep.child_id is not None:
                settler.epoch(ep.child_id)

    def _ledger(
        self,
        keyed: list[Message],
        device_ids: dict[tuple[str, str], int],
        epoch_ids: dict[tuple[int, str], int],
    ) -> list[tuple[Key, Message]]:
        """Insert new keys; sort out duplicates, conflicts and expired copies. Returns what is new."""
        first: dict[Key, Message] = {}
        for m in keyed:
            key = (epoch_ids[(device_ids[(m.site, m.device)], m.epoch)], m.seq)
            if key[1] <= self.epochs[key[0]].pruned_seq:
                self.out.expired += 1
            elif key not in first:
                first[key] = m
            elif first[key].text == m.text:
                self.out.duplicates += 1
            else:
                self._conflict(key, m)
        if not first:
            return []
        rows = [(k[0], k[1], m.kind, m.ts, m.received, m.text) for k, m in first.items()]
        c = t.messages.c
        cols = ("epoch_id", "seq", "kind", "ts", "received", "payload")
        inserted = {
            (int(e), int(s))
            for e, s in bulk.insert_new(self.conn, t.messages, cols, ("epoch_id", "seq"), rows)
        }
        again = [k for k in first if k not in inserted]
        if again:
            stored = {
                (r.epoch_id, int(r.seq)): r.payload
                for r in self.conn.execute(
                    select(c.epoch_id, c.seq, c.payload).where(tuple_(c.epoch_id, c.seq).in_(again))
                )
            }
            for k in again:
                if stored.get(k) == first[k].text:
                    self.out.duplicates += 1
                else:
                    self._conflict(k, first[k])
        self.out.stored = len(inserted)
        return sorted(((k, m) for k, m in first.items() if k in inserted), key=lambda km: km[0])

    def _conflict(self, key: Key, m: Message) -> None:
        digest = hashlib.sha256(m.text.encode()).hexdigest()
        row = {
            "epoch_id": key[0],
            "seq": key[1],
            "received": m.received,
            "topic": m.topic,
            "payload": m.text,
            "digest": digest,
        }
        stmt = _insert(self.conn, t.conflicts).on_conflict_do_nothing().returning(t.conflicts.c.id)
        if self.conn.execute(stmt, row).first() is not None:
            self.out.conflicts += 1
            self.out.conflict_lines.append(
                f"conflict: {m.site}/{m.device} epoch {m.epoch} seq {m.seq} arrived again with another "
                f"payload ({m.kind}); the first one stays, this one is in the conflicts table"
            )
        else:
            self.out.duplicates += 1

    def _sequences(self, fresh: list[tuple[Key, Message]]) -> None:
        """Seq ranges and gaps per epoch: a seq above the top opens a gap, one inside a gap closes it."""
        by_epoch: dict[int, list[int]] = defaultdict(list)
        for (epoch_id, seq), _ in fresh:
            by_epoch[epoch_id].append(seq)
        late = [
            i
            for i, seqs in by_epoch.items()
            if self.epochs[i].top_seq is not None and min(seqs) < (self.epochs[i].top_seq or 0)
        ]
        gaps: dict[int, list[list[int]]] = defaultdict(list)
        if late:
            g = t.seq_gaps.c
            for r in self.conn.execute(
                select(g.epoch_id, g.first_seq, g.last_seq).where(g.epoch_id.in_(late))
            ):
                gaps[r.epoch_id].append([int(r.first_seq), int(r.last_seq)])
        before = {i: {tuple(x) for x in gaps[i]} for i in late}
        for epoch_id, seqs in by_epoch.items():
            ep = self.epochs[epoch_id]
            for s in sorted(seqs):
                _place(ep, gaps[epoch_id], s)
            ep.set(
                n_messages=ep.n_messages + len(seqs), max_seq=max(seqs + ([ep.max_seq] if ep.max_seq else []))
            )
        self._write_gaps(gaps, before)

    def _write_gaps(self, gaps: dict[int, list[list[int]]], before: dict[int, set[tuple[int, ...]]]) -> None:
        drop, add = [], []
        for epoch_id, ranges in gaps.items():
            now = {tuple(x) for x in ranges}
            old = before.get(epoch_id, set())
            drop += [(epoch_id, r[0]) for r in old - now]
            add += [
                {"epoch_id": epoch_id, "first_seq": r[0], "last_seq": r[1], "since": _now()}
                for r in now - old
            ]
        bulk.delete_keys(self.conn, t.seq_gaps, ("epoch_id", "first_seq"), drop)
        if add:
            self.conn.execute(t.seq_gaps.insert(), add)

    def _epoch_messages(self, msgs: list[Message], device_ids: dict[tuple[str, str], int]) -> set[int]:
        """Record each epoch message; link the parent; its missing tail becomes a gap. Returns the epochs."""
        changed: set[int] = set()
        for m in msgs:
            device_id = device_ids[(m.site, m.device)]
            ep = self.epochs[self.epoch_ids[(device_id, m.epoch)]]
            prev = m.body.get("previous") or {}
            ep.set(
                started=float(m.body["timestamp"]),
                state=m.body["state"],
                interval_start=float(m.body["interval_start"]),
                prev_epoch=prev.get("epoch"),
                prev_last_seq=prev.get("last_seq"),
            )
            ep.counted_text = json.dumps(m.body.get("counted"))
            ep.announced = m
            ep.dirty.add("announced")
            if prev.get("epoch"):
                parent = self.epochs[self.epoch_ids[(device_id, prev["epoch"])]]
                ep.parent_id, ep.parent_max_seq = parent.id, parent.max_seq
                parent.set(child_id=ep.id)
                last = prev.get("last_seq")
                if last is not None and parent.max_seq is not None and last > (parent.top_seq or 0):
                    self._write_gaps({parent.id: [[int(parent.top_seq or 0) + 1, int(last)]]}, {})
                    parent.set(top_seq=int(last))
            changed.add(ep.id)
        return changed

    def _crossings(self, items: list[tuple[Key, Message]], device_ids: dict[tuple[str, str], int]) -> None:
        if not items:
            return
        rows = [
            (
                k[0],
                k[1],
                device_ids[(m.site, m.device)],
                m.ts,
                m.body["line"],
                m.body["direction"],
                m.body["class_name"],
                m.body.get("track_id"),
            )
            for k, m in items
        ]
        cols = ("epoch_id", "seq", "device_id", "ts", "line", "direction", "class_name", "track_id")
        bulk.insert(self.conn, t.crossings, cols, rows)

    def _command_results(
        self, items: list[tuple[Key, Message]], device_ids: dict[tuple[str, str], int]
    ) -> None:
        if not items:
            return
        rows = [
            {
                "epoch_id": k[0],
                "seq": k[1],
                "device_id": device_ids[(m.site, m.device)],
                "command_id": None if m.body.get("id") is None else str(m.body["id"])[:128],
                "command": str(m.body["command"])[:64],
                "ok": bool(m.body["ok"]),
                "message": str(m.body["message"]),
                "duplicate": bool(m.body.get("duplicate", False)),
                "ts": m.ts,
            }
            for k, m in items
        ]
        self.conn.execute(t.command_results.insert(), rows)

    def _alerts(self, items: list[tuple[Key, Message]], device_ids: dict[tuple[str, str], int]) -> None:
        """The current state per alert topic: the newest message (by timestamp, then seq) wins."""
        if not items:
            return
        a = t.alerts.c
        keys = {(device_ids[(m.site, m.device)], m.sub) for _, m in items}
        current = {
            (r.device_id, r.topic): r
            for r in self.conn.execute(select(t.alerts).where(tuple_(a.device_id, a.topic).in_(list(keys))))
        }
        latest: dict[tuple[int, str], dict[str, Any]] = {}
        for _, m in sorted(items, key=lambda km: (km[1].ts, km[1].seq)):
            key = (device_ids[(m.site, m.device)], m.sub)
            old = latest.get(key) or (dict(current[key]._mapping) if key in current else None)
            if old is not None and (old["updated"], old["seq"]) > (m.ts, m.seq):
                continue
            since = old["since"] if old is not None and old["state"] == m.body["state"] else m.ts
            latest[key] = {
                "device_id": key[0],
                "topic": m.sub,
                "kind": m.body.get("kind", "source"),
                "product": m.body.get("product"),
                "state": m.body["state"],
                "since": since,
                "updated": m.ts,
                "epoch": m.epoch,
                "seq": m.seq,
                "payload": m.text,
            }
        for key, row in latest.items():
            if key in current:
                self.conn.execute(
                    t.alerts.update().where(a.device_id == key[0], a.topic == key[1]).values(**row)
                )
            else:
                self.conn.execute(t.alerts.insert().values(**row))

    def _status(self, msgs: list[Message], device_ids: dict[tuple[str, str], int]) -> None:
        """The retained status: the newest (by its timestamp; a Will has none: received time) wins."""
        d = t.devices.c
        for m in sorted(msgs, key=lambda x: x.ts):
            b = m.body
            at = float(b.get("timestamp", m.received))
            values = {
                "status": b["state"],
                "status_reason": b.get("reason"),
                "status_at": at,
                "status_json": m.text,
            }
            if b["state"] == "online":
                values |= {
                    "model_version": b.get("model_version"),
                    "fps": b.get("fps"),
                    "source_state": str(b["source"])[:32] if b.get("source") is not None else None,
                    "status_epoch": str(b["epoch"])[:64] if b.get("epoch") is not None else None,
                    "state_recovered": b.get("state_recovered"),
                }
            device_id = device_ids[(m.site, m.device)]
            newer = (d.status_at.is_(None)) | (d.status_at <= at)
            self.conn.execute(t.devices.update().where(d.id == device_id, newer).values(**values))
            self.out.status += 1

    def _counts(
        self, items: list[tuple[Key, Message]], device_ids: dict[tuple[str, str], int], settler: Settler
    ) -> None:
        """Counts periods: the fast path in memory, the rest settled with queries, in seq order."""
        if not items:
            return
        periods: list[Period] = []
        slow: list[Period] = []
        unsure: set[int] = set()
        for (epoch_id, seq), m in items:  # sorted by (epoch, seq)
            b = m.body
            counted = b.get("counted")
            p = Period(
                epoch_id,
                seq,
                device_ids[(m.site, m.device)],
                float(b["period_start"]),
                float(b["period_end"]),
                flat(b["interval"]),
                None if counted is None else flat(counted),
            )
            ep = self.epochs[epoch_id]
            if epoch_id in unsure or not settler.fast(p, ep):
                unsure.add(epoch_id)
                slow.append(p)
            periods.append(p)
        rows = [p.row() for p in periods]
        bulk.insert(self.conn, t.counts_periods, tuple(rows[0]), [tuple(r.values()) for r in rows])
        batch = {(p.epoch_id, p.seq) for p in periods}
        for p in slow:
            was_first = _is_first(self.conn, p)
            settler.resettle(p)
            if was_first or p.gap == "root" or p.role == "replay":
                settler.transitions.add(p.epoch_id)
            nxt = settler.successor(p)
            if nxt is not None and (nxt.epoch_id, nxt.seq) not in batch:
                settler.resettle(nxt)
                if nxt.epoch_id != p.epoch_id:
                    settler.transitions.add(nxt.epoch_id)
        ends: dict[int, tuple[float, float]] = {}
        for (_, _), m in items:
            device_id = device_ids[(m.site, m.device)]
            end = float(m.body["period_end"])
            if device_id not in ends or end > ends[device_id][0]:
                ends[device_id] = (end, m.received)
        last = [(dv, end, rc) for dv, (end, rc) in sorted(ends.items())]
        cols = ("id", "last_counts_end", "last_counts_received")
        bulk.update(self.conn, t.devices, cols, last, newer="last_counts_end")
        for epoch_id in {p.epoch_id for p in periods}:
            child = self.epochs[epoch_id].child_id
            if child is not None:
                settler.transitions.add(child)

    def _refresh_parents(self) -> None:
        for ep in self.epochs.values():
            if ep.parent_id is not None and ep.parent_id in self.epochs:
                ep.parent_max_seq = self.epochs[ep.parent_id].max_seq

    def _links(
        self,
        settler: Settler,
        fresh: list[tuple[Key, Message]],
        breaks_before: dict[int, bool],
        changed: set[int],
    ) -> None:
        """Epoch links that changed (an epoch message, a fork seen late): settle the epoch's start again."""
        touched = {k[0] for k, _ in fresh}
        for epoch_id in list(self.epochs):
            ep = self.epochs[epoch_id]
            flipped = epoch_id in breaks_before and breaks_before[epoch_id] != ep.is_break
            if epoch_id in changed or flipped:
                settler.resettle_start(ep)
                # The epochs continuing this one may start their chain from it (its virtual start, or
                # through it from an earlier one): their first periods are settled again too.
                child, hops = ep.child_id, 0
                while child is not None and hops < 8:
                    settler.resettle_start(settler.epoch(child))
                    child, hops = settler.epoch(child).child_id, hops + 1
            if ep.parent_id in touched:
                settler.transitions.add(epoch_id)

    def _events_in_open_spans(
        self, settler: Settler, items: list[tuple[Key, Message]], device_ids: dict[tuple[str, str], int]
    ) -> None:
        """Late crossing events may make an unattributed stretch exact, or raise a span's lower bound."""
        if not items:
            return
        times: dict[int, list[float]] = defaultdict(list)
        for _, m in items:
            times[device_ids[(m.site, m.device)]].append(m.ts)
        cp = t.counts_periods.c
        # The literal predicate matches the partial index ix_counts_periods_open (a bound one would not).
        rows = self.conn.execute(
            select(t.counts_periods).where(text(OPEN_GAPS), cp.device_id.in_(list(times)))
        ).all()
        for r in rows:
            lo = r.gap_start if r.gap_start is not None else r.period_start
            if r.gap == "partial" and any(lo <= ts < r.period_end for ts in times[r.device_id]):
                settler.resettle(Period.from_row(r))
        e = t.epochs.c
        for r in self.conn.execute(
            select(e.id, e.device_id, e.span_start, e.span_end).where(
                e.span_end.is_not(None), e.device_id.in_(list(times))
            )
        ):
            if any(r.span_start <= ts < r.span_end for ts in times[r.device_id]):
                settler.transitions.add(r.id)

    def _hourly(self, settler: Settler) -> None:
        deltas = [(dv, h, k, n) for (dv, h, k), n in sorted(settler.deltas.items()) if n]
        if not deltas:
            return
        key_ids = self._key_ids({k for _, _, k, _ in deltas})
        rows = sorted((dv, h, key_ids[k], n) for dv, h, k, n in deltas)
        bulk.add_counts(self.conn, t.hourly, ("device_id", "hour", "key_id"), rows)
        # The store roll-up, in key order (two collectors updating one store lock its rows in one order).
        sites = {dv: s for (s, _), dv in self.devices.items()}
        per_site: dict[tuple[str, int, int], int] = defaultdict(int)
        for dv, h, k, n in rows:
            per_site[(sites[dv], h, k)] += n
        site_rows = [(*key, n) for key, n in sorted(per_site.items()) if n]
        bulk.add_counts(self.conn, t.site_hourly, ("site", "hour", "key_id"), site_rows)

    def _key_ids(self, keys: set[tuple[str, str, str]]) -> dict[tuple[str, str, str], int]:
        k = t.count_keys.c
        missing = [x for x in keys if x not in self.keys]
        if missing:
            sel = select(k.id, k.line, k.direction, k.class_name)
            found = self.conn.execute(sel.where(tuple_(k.line, k.direction, k.class_name).in_(missing))).all()
            if len(found) < len(missing):
                rows = [{"line": a, "direction": b, "class_name": c} for a, b, c in missing]
                self.conn.execute(_insert(self.conn, t.count_keys).on_conflict_do_nothing(), rows)
                found = self.conn.execute(
                    sel.where(tuple_(k.line, k.direction, k.class_name).in_(missing))
                ).all()
            for r in found:
                self.keys[(r.line, r.direction, r.class_name)] = self.new_keys[
                    (r.line, r.direction, r.class_name)
                ] = r.id
        return {x: self.keys[x] for x in keys}

    def _write_epochs(self) -> None:
        """Write back what changed: the bookkeeping of every touched epoch in one executemany."""
        rows = []
        for ep in self.epochs.values():
            if not ep.dirty:
                continue
            rows.append((ep.id, *(getattr(ep, k) for k in _BOOKKEEPING)))
            if "announced" in ep.dirty:
                m = ep.announced
                self.conn.execute(
                    t.epochs.update()
                    .where(t.epochs.c.id == ep.id)
                    .values(
                        started=ep.started,
                        state=ep.state,
                        interval_start=ep.interval_start,
                        prev_epoch=ep.prev_epoch,
                        prev_last_seq=ep.prev_last_seq,
                        announced_seq=m.seq,
                        recovered=m.body.get("recovered"),
                        counted=json.dumps(m.body.get("counted")),
                    )
                )
            ep.dirty.clear()
        bulk.update(self.conn, t.epochs, ("id", *_BOOKKEEPING), rows)

    def _rejected(self, rejections: Iterable[Rejection]) -> None:
        rows = [
            {
                "received": r.received,
                "topic": r.topic[:1000],
                "size": len(r.raw),
                "raw": r.raw[:RAW_KEEP],
                "reason": r.reason,
            }
            for r in rejections
        ]
        if rows:
            self.conn.execute(t.rejected.insert(), rows)


_BOOKKEEPING = ("child_id", "min_seq", "max_seq", "top_seq", "n_messages", "tail_seq", "tail_end")


def _place(ep: EpochState, gaps: list[list[int]], s: int) -> None:
    """Account for seq ``s`` of an epoch: extend the range (opening a gap) or fill a gap."""
    if ep.top_seq is None or ep.min_seq is None:
        ep.set(min_seq=s, top_seq=s)
    elif s > ep.top_seq:
        if s > ep.top_seq + 1:
            gaps.append([ep.top_seq + 1, s - 1])
        ep.set(top_seq=s)
    elif s < ep.min_seq:
        if s + 1 <= ep.min_seq - 1:
            gaps.append([s + 1, ep.min_seq - 1])
        ep.set(min_seq=s)
    else:
        for g in gaps:
            if g[0] <= s <= g[1]:
                gaps.remove(g)
                if g[0] <= s - 1:
                    gaps.append([g[0], s - 1])
                if s + 1 <= g[1]:
                    gaps.append([s + 1, g[1]])
                break


def _is_first(conn: Connection, p: Period) -> bool:
    cp = t.counts_periods.c
    lower = conn.execute(
        select(cp.seq).where(and_(cp.epoch_id == p.epoch_id, cp.seq < p.seq)).limit(1)
    ).first()
    return lower is None


def _now() -> float:
    return time.time()
