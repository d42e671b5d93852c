"""The operator console: server-rendered pages under ``/ui/`` of the sidecar API.

Overview, jobs (filters in the URL, keyset paging), one job (parameters, deliveries per sink,
the transcript read back from CI), dead letters grouped by reason with a replay that always
goes through a confirmation page showing how many messages it would send. Jinja2 templates
with autoescaping (transcripts and UserData are untrusted), one stylesheet and a few lines of
script, all served from here: no CDN, no build step, and every page works without script.
Actions are POSTs with a CSRF token answered by a redirect, and are refused by the server
unless ``[http] console_actions`` is on.
"""

from __future__ import annotations

from .routes import ConsoleContext, build_router

__all__ = ["ConsoleContext", "build_router"]
