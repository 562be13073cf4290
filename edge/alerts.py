"""Restock alerts per product class: shelf depletion from sales, and low occupancy of a zone.

Depletion: each rule starts from a configured shelf ``stock``; each sale (a crossing of the product in
the configured direction, on the configured line or any line) lowers the estimate by one. At or below
``threshold`` an alert is *raised* once; it stays raised (the publisher keeps it as a retained
message) until :meth:`AlertEngine.restocked` resets the estimate and *clears* it.

Occupancy: the number of products of a class whose bottom-centre anchor lies inside a polygon zone.
Below ``min_count`` for ``hold_s`` seconds raises an alert; at or above it for ``hold_s`` seconds clears
it. A condition that does not hold for the whole ``hold_s`` resets its timer, so a product briefly
hidden by a hand does not make the alert flap::

    count   3 3 1 1 3 1 1 1 1 1 3 3 3 3
    below   . . x x . x x x x x . . . .
    alert             |-raised (hold_s)-|  cleared after hold_s above

State (estimates, raised flags) is restored from ``saved`` at start and its changes are handed out by
:meth:`AlertEngine.take_changes`, which the daemon commits in the same transaction as the frame's
crossings and the alert's message (:mod:`edge.state`): an active alert survives a restart, is not raised
a second time, and is never ``raised`` without its message queued.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from edge.config import AlertsConfig, DepletionRule, OccupancyRule
from edge.counting import Crossing
from edge.counts import class_name
from edge.detections import Detections
from edge.errors import CommandError, ConfigError
from edge.geometry import point_in_polygon

__all__ = ["Alert", "AlertEngine"]

AlertKind = Literal["depletion", "occupancy"]
AlertState = Literal["raised", "cleared"]


def _topic_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


@dataclass(frozen=True)
class Alert:
    """A change of one alert's state.

    Attributes:
        kind: ``depletion`` or ``occupancy``.
        product: class name.
        state: ``raised`` or ``cleared``.
        value: the estimate (depletion) or the count in the zone (occupancy).
        threshold: depletion threshold, or occupancy ``min_count``.
        timestamp: Unix time (or video time) of the change.
        details: extra payload fields (``stock``, ``hold_s``, ``line``...).
    """

    kind: AlertKind
    product: str
    state: AlertState
    value: int
    threshold: int
    timestamp: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def topic_kind(self) -> str:
        """Topic below the device, one retained topic per kind and product."""
        return f"alerts/restock/{self.kind}/{_topic_safe(self.product)}"

    @property
    def retain(self) -> bool:
        """Alerts are retained so a dashboard that connects later sees the current state."""
        return True

    def to_payload(self) -> dict[str, Any]:
        """The ``alerts/restock`` payload (see ``edge/schemas/alert.json``)."""
        value_key = "estimate" if self.kind == "depletion" else "count"
        return {
            "kind": self.kind,
            "product": self.product,
            "state": self.state,
            value_key: self.value,
            "threshold": self.threshold,
            "timestamp": self.timestamp,
            **self.details,
        }


class AlertEngine:
    """Evaluate restock rules on crossings and frames; persist their state.

    Args:
        cfg: the ``alerts`` section of the config.
        names: class names of the model, indexed by class id.
        saved: the alert state saved by an earlier run (``StateStore.alert_state()``), if any.

    Raises:
        ConfigError: when a product has two rules of the same kind (their alerts would share a topic).

    Example:
        >>> cfg = AlertsConfig(depletion=[{"product": "milk", "stock": 2, "threshold": 1}])
        >>> eng = AlertEngine(cfg, ["milk"])
        >>> eng.depletion_estimate("milk")
        2
    """

    def __init__(
        self, cfg: AlertsConfig, names: Sequence[str], saved: Mapping[str, Any] | None = None
    ) -> None:
        _check_unique("alerts.depletion", [r.product for r in cfg.depletion])
        _check_unique("alerts.occupancy", [r.product for r in cfg.occupancy])
        self.cfg = cfg
        self.names = list(names)
        self._saved = dict(saved or {})
        self._changes: dict[str, Any] = {}
        self._depletion: dict[str, dict[str, Any]] = {}
        for rule in cfg.depletion:
            saved = self._load(f"alert:depletion:{rule.product}")
            self._depletion[rule.product] = saved or {"estimate": rule.stock, "raised": False}
        self._occupancy: dict[str, dict[str, Any]] = {}
        for occ in cfg.occupancy:
            saved = self._load(f"alert:occupancy:{occ.product}")
            self._occupancy[occ.product] = {"raised": bool(saved and saved.get("raised")), "since": None}
        self._class_ids = {name: i for i, name in enumerate(self.names)}

    def _load(self, key: str) -> dict[str, Any] | None:
        value = self._saved.get(key)
        return value if isinstance(value, dict) else None

    def _save(self, values: dict[str, Any]) -> None:
        self._changes.update(values)

    def take_changes(self) -> dict[str, Any]:
        """State changed since the last call, ``{key: value}``, to be committed with the frame."""
        changes, self._changes = self._changes, {}
        self._saved.update(changes)
        return changes

    # --- depletion -----------------------------------------------------------------------------

    def depletion_estimate(self, product: str) -> int:
        """Current stock estimate of ``product``.

        Raises:
            KeyError: when there is no depletion rule for it.
        """
        return int(self._depletion[product]["estimate"])

    def active(self) -> list[tuple[AlertKind, str]]:
        """``(kind, product)`` of every alert currently raised."""
        dep: list[tuple[AlertKind, str]] = [
            ("depletion", p) for p, s in self._depletion.items() if s["raised"]
        ]
        occ: list[tuple[AlertKind, str]] = [
            ("occupancy", p) for p, s in self._occupancy.items() if s["raised"]
        ]
        return dep + occ

    def on_crossings(self, crossings: Iterable[Crossing], timestamp: float | None = None) -> list[Alert]:
        """Lower the estimates by the sales among ``crossings``; return alerts newly raised.

        Alerts are stamped ``timestamp`` (wall time), or the crossing's own time when not given.
        """
        alerts: list[Alert] = []
        changed: dict[str, Any] = {}
        for c in crossings:
            product = class_name(self.names, int(c.class_id))
            for rule in self.cfg.depletion:
                if not _is_sale(rule, product, c):
                    continue
                st = self._depletion[rule.product]
                st["estimate"] = max(0, int(st["estimate"]) - 1)
                changed[f"alert:depletion:{rule.product}"] = dict(st)
                if not st["raised"] and st["estimate"] <= rule.threshold:
                    st["raised"] = True
                    changed[f"alert:depletion:{rule.product}"] = dict(st)
                    t = float(c.timestamp) if timestamp is None else timestamp
                    alerts.append(_depletion_alert(rule, st, "raised", t))
        self._save(changed)
        return alerts

    def restocked(self, product: str, stock: int | None = None, t: float | None = None) -> list[Alert]:
        """Reset the estimate of ``product`` after a restock; return the ``cleared`` alert if one was raised.

        Args:
            product: class name with a depletion rule.
            stock: units now on the shelf (default: the rule's ``stock``).
            t: time of the restock (default: now).

        Raises:
            CommandError: when no depletion rule covers ``product``.
        """
        alerts, changes = self.plan_restocked(product, stock, t)
        self.load(changes)
        self._save(changes)
        return alerts

    def plan_restocked(
        self, product: str, stock: int | None = None, t: float | None = None
    ) -> tuple[list[Alert], dict[str, Any]]:
        """What :meth:`restocked` would change, changing nothing: its alerts and the state to commit.

        The daemon commits the state first and hands it to :meth:`load` after, so a failed commit
        leaves the engine as it was.
        """
        rule = next((r for r in self.cfg.depletion if r.product == product), None)
        if rule is None:
            known = ", ".join(sorted(self._depletion)) or "none configured"
            raise CommandError(f"restocked: no depletion rule for product {product!r} (known: {known})")
        st = dict(self._depletion[product])
        st["estimate"] = rule.stock if stock is None else int(stock)
        now = time.time() if t is None else t
        alerts = []
        low = st["estimate"] <= rule.threshold
        if st["raised"] != low:
            st["raised"] = low
            alerts.append(_depletion_alert(rule, st, "raised" if low else "cleared", now))
        return alerts, {f"alert:depletion:{product}": st}

    def load(self, committed: Mapping[str, Any]) -> None:
        """Take over depletion state that was committed (from :meth:`plan_restocked`)."""
        for key, value in committed.items():
            _, kind, product = key.split(":", 2)
            if kind == "depletion" and product in self._depletion:
                self._depletion[product] = dict(value)
            self._saved[key] = value

    # --- occupancy -----------------------------------------------------------------------------

    def zone_count(self, rule: OccupancyRule, tracked: Detections) -> int:
        """Products of ``rule.product`` whose bottom-centre anchor is inside ``rule.zone``."""
        cls = self._class_ids.get(rule.product)
        if cls is None or len(tracked) == 0:
            return 0
        mine = tracked[tracked.class_id == cls]
        if len(mine) == 0:
            return 0
        return int(point_in_polygon(mine.anchors("bottom_center"), rule.zone).sum())

    def on_frame(self, tracked: Detections, t: float) -> list[Alert]:
        """Update the occupancy rules with one frame at time ``t`` (seconds); return state changes."""
        alerts: list[Alert] = []
        for rule in self.cfg.occupancy:
            count = self.zone_count(rule, tracked)
            st = self._occupancy[rule.product]
            # The condition that would flip the state: below while clear, at/above while raised.
            flipping = (count < rule.min_count) != st["raised"]
            if not flipping:
                st["since"] = None
                continue
            if st["since"] is None:
                st["since"] = t
            if t - st["since"] >= rule.hold_s:
                st["raised"], st["since"] = not st["raised"], None
                self._save({f"alert:occupancy:{rule.product}": {"raised": st["raised"]}})
                alerts.append(_occupancy_alert(rule, count, "raised" if st["raised"] else "cleared", t))
        return alerts


def _check_unique(section: str, products: list[str]) -> None:
    dupes = sorted({p for p in products if products.count(p) > 1})
    if dupes:
        raise ConfigError(f"{section}: more than one rule for product {', '.join(map(repr, dupes))}")


def _is_sale(rule: DepletionRule, product: str, c: Crossing) -> bool:
    return (
        rule.product == product
        and str(c.direction) == rule.direction
        and (rule.line is None or rule.line == c.line)
    )


def _depletion_alert(rule: DepletionRule, st: dict[str, Any], state: AlertState, t: float) -> Alert:
    details: dict[str, Any] = {"stock": rule.stock}
    if rule.line is not None:
        details["line"] = rule.line
    return Alert("depletion", rule.product, state, int(st["estimate"]), rule.threshold, t, details)


def _occupancy_alert(rule: OccupancyRule, count: int, state: AlertState, t: float) -> Alert:
    return Alert("occupancy", rule.product, state, count, rule.min_count, t, {"hold_s": rule.hold_s})
