"""lanecount back office: receive every lane's MQTT messages, store them exactly once, answer queries.

Layout (the ingest path reads top-down: message → validate → batch → commit → ack):

- :mod:`backoffice.protocol`  topics, JSON Schemas, one :class:`~backoffice.protocol.Message` per message
- :mod:`backoffice.tables`    the database schema (SQLAlchemy Core), one schema for SQLite and PostgreSQL
- :mod:`backoffice.db`        engines (SQLite WAL, psycopg 3), Alembic migrations, retention
- :mod:`backoffice.ingest`    one batch in one transaction: idempotent insert, conflicts, rejected, gaps,
  device state, alerts
- :mod:`backoffice.figures`   counts messages → hourly roll-ups that hold (missing stretches, epochs)
- :mod:`backoffice.collector` the MQTT 5 shared-subscription client: batch, commit, then acknowledge
- :mod:`backoffice.queries`   counts, devices, gaps, alerts: plain functions the CLI and the dashboard share
- :mod:`backoffice.cli`       ``lanecount-backoffice``
- :mod:`backoffice.simdevice` simulated devices that follow the protocol (tests, benchmark)
"""

__version__ = "0.1.0"
