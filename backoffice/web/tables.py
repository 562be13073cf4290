"""The dashboard's own tables, beside the collector's (backoffice/tables.py), in one database.

=================  ===================================================================================
table              what it holds
=================  ===================================================================================
``users``          a login: name, role (``admin`` or ``store``), the stores it may see, argon2 hash
``user_sites``     the stores of a ``store`` user (an admin sees every store)
``web_sessions``   a signed-in browser or script: the SHA-256 of its cookie (never the cookie), its
                   CSRF token, when it expires
``login_failures`` failed logins (name, address, time): the rate limit reads them
``commands``       the audit log of commands sent to devices: who, when, what, each send; the
                   device's answer is in ``command_results`` (written by the collector), by id
``site_settings``  per store: its time zone
=================  ===================================================================================
"""

from __future__ import annotations

from sqlalchemy import Column, Float, ForeignKey, Index, Integer, MetaData, String, Table, Text

from backoffice import tables as collector_tables

__all__ = ["commands", "login_failures", "metadata", "site_settings", "user_sites", "users", "web_sessions"]

# The collector's naming convention, so constraint names follow one scheme in the database.
metadata = MetaData(naming_convention=collector_tables.metadata.naming_convention)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("created", Float, nullable=False),
    Column("password_changed", Float, nullable=False),
)

user_sites = Table(
    "user_sites",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("site", String(200), primary_key=True),
)

web_sessions = Table(
    "web_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("expires", Float, nullable=False),
    Column("address", String(64)),
    Index(None, "user_id"),
)

login_failures = Table(
    "login_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("address", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Index(None, "name", "at"),
    Index(None, "address", "at"),
)

commands = Table(
    "commands",
    metadata,
    Column("id", String(32), primary_key=True),  # sent to the device as the command's "id"
    Column("site", String(200), nullable=False),
    Column("device", String(200), nullable=False),
    Column("command", String(32), nullable=False),
    Column("payload", Text, nullable=False),  # the JSON published, id included
    Column("user_name", String(64), nullable=False),
    Column("created", Float, nullable=False),
    Column("attempts", Integer, nullable=False),  # publishes tried
    Column("sent_at", Float),  # the last publish the broker acknowledged (NULL: none yet)
    Column("last_error", Text),  # why the last publish failed
    Column("device_state", String(16)),  # the device's state when last sent: online, offline, stale, unknown
    Index(None, "site", "created"),
    Index(None, "sent_at"),
)

site_settings = Table(
    "site_settings",
    metadata,
    Column("site", String(200), primary_key=True),
    Column("tz", String(64), nullable=False),
    Column("updated", Float, nullable=False),
    Column("updated_by", String(64), nullable=False),
)
