"""Log lines as JSON (python-json-logger), each with the trace id of the request it belongs to.

The trace id travels between services in the gRPC metadata (W3C traceparent, see
services/common/tracing.py), so one id finds a request's lines in every service's log; the
gateway hands the same id to the browser as X-Request-Id. LOG_LEVEL sets the level and
LOG_FORMAT=text gives plain lines for a terminal.
"""

from __future__ import annotations

import logging
import sys

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

from services.common.settings import ProcessSettings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(trace_id)s]: %(message)s"


class TraceIds(logging.Filter):
    """Adds trace_id and span_id (hex; empty outside a traced request) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        else:
            record.trace_id = record.span_id = ""
        return True


def configure_logging(
    level: str | None = None, process: str | None = None, text: bool | None = None
) -> None:
    """Root logging to stdout: JSON lines unless `text` (default: LOG_FORMAT=text); level
    `level`, else LOG_LEVEL, else INFO. `process` names the service in every JSON line."""
    settings = ProcessSettings.from_env()
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(TraceIds())
    if text is None:
        text = settings.log_format == "text"
    if text:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    else:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(trace_id)s %(span_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                static_fields={"service": process} if process else None,
            )
        )
    logging.basicConfig(level=(level or settings.log_level).upper(), handlers=[handler], force=True)
