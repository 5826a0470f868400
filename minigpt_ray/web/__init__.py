"""Browser pages: the playground (served at /) and the runs page (/runs, and report.html beside report.md)."""
