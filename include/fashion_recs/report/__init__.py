"""The run report: a self-contained HTML page per run (see `render`)."""

from fashion_recs.report.render import ReportResult, build_report, write_run_report

__all__ = ["ReportResult", "build_report", "write_run_report"]
