#!/usr/bin/env python3
"""Turns the conformance suite's JSON reports (one per backend, written by every
*_conformance test into build/conformance-report/) into the README's backends x cases table.

  scripts/conformance_table.py [REPORT_DIR] [README]     (defaults: build/conformance-report README.md)

Rewrites the part of README between the conformance-table markers; prints the table when
README is "-". Cells: "pass", "FAIL", or "skip" with the missing capability or hook.
"""
import json
import pathlib
import re
import sys

BEGIN = "<!-- conformance-table:begin (scripts/conformance_table.py writes this) -->"
END = "<!-- conformance-table:end -->"
# Column order: the backends users pick from first, then the rest alphabetically.
PREFERRED = ["memory", "redis", "kafka", "kafka_ordered_per_key", "nats"]


def cell(case):
    if case["result"] == "passed":
        return "pass"
    if case["result"] == "failed":
        return "**FAIL**"
    reason = case.get("reason", "")
    missing = re.search(r"(Capabilities|BackendUnderTest)::(\w+)", reason)
    return f"skip ({missing.group(2)})" if missing else "skip"


def table(reports):
    backends = sorted(reports, key=lambda b: (PREFERRED.index(b) if b in PREFERRED else 99, b))
    cases = []
    for b in backends:
        for case in reports[b]["cases"]:
            if case["name"] not in cases:
                cases.append(case["name"])
    lines = ["| case | " + " | ".join(backends) + " |",
             "|---|" + "---|" * len(backends)]
    for name in cases:
        row = []
        for b in backends:
            found = [c for c in reports[b]["cases"] if c["name"] == name]
            row.append(cell(found[0]) if found else "not run")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    totals = [f'{reports[b]["passed"]} pass, {reports[b]["failed"]} fail, {reports[b]["skipped"]} skip'
              for b in backends]
    lines.append("| **total** | " + " | ".join(totals) + " |")
    return "\n".join(lines) + "\n"


def main():
    report_dir = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "build/conformance-report")
    readme = sys.argv[2] if len(sys.argv) > 2 else "README.md"
    reports = {}
    for path in sorted(report_dir.glob("*.json")):
        report = json.loads(path.read_text())
        reports[report["backend"]] = report
    if not reports:
        sys.exit(f"no conformance reports in {report_dir} (run the *_conformance tests first)")
    text = table(reports)
    if readme == "-":
        sys.stdout.write(text)
        return
    path = pathlib.Path(readme)
    content = path.read_text()
    if BEGIN not in content or END not in content:
        sys.exit(f"{readme} has no conformance-table markers")
    head, rest = content.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(head + BEGIN + "\n" + text + END + tail)


if __name__ == "__main__":
    main()
