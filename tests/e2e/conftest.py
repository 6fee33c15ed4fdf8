"""End-to-end test hooks: say where artifacts went (tests record them with
`record_property("artifacts", path)`), at the end of the run, even when output is captured."""

from typing import Any


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    seen = set()
    for reports in terminalreporter.stats.values():
        for report in reports:
            for name, value in getattr(report, "user_properties", ()):
                if name == "artifacts" and value not in seen:
                    seen.add(value)
                    terminalreporter.write_line(f"artifacts of {report.nodeid.split('::')[-1]}: {value}")
