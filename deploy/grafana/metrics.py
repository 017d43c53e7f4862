#!/usr/bin/env python3
"""Prints every metric name that hookwire's Grafana dashboard and Prometheus
alert rules reference, one per line, sorted, as

    NAME<TAB>BASE

where BASE is NAME without a histogram's `_bucket`, `_sum` or `_count`
suffix (the name a /metrics page declares with `# TYPE`), or NAME itself.
A test that scrapes a live hookwire /metrics checks every BASE against it.

    python3 deploy/grafana/metrics.py [--dashboard FILE] [--rules FILE] [--exprs]

Defaults: deploy/grafana/hookwire.json and deploy/prometheus/alerts.yml,
next to this script. `--exprs` prints the PromQL expressions found instead
(a debugging aid). Standard library only: no YAML module needed.

What counts as a metric name: in each PromQL expression (the dashboard's
`expr` fields, its query variables' `label_values(...)`/`query_result(...)`
expressions, the rules' `expr` values), every identifier that is not a
function or aggregation (an identifier followed by `(`), not a keyword
(by, without, on, ignoring, group_left, group_right, offset, bool, and, or,
unless, atan2, inf, nan), and not a label name (label matchers `{...}`,
grouping lists `by (...)` and the like are removed first, as are strings,
ranges `[...]`, comments and Grafana variables such as `$__rate_interval`),
plus the names selected by an equality matcher `{__name__="NAME"}`.
"""

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DASHBOARD = HERE / "hookwire.json"
DEFAULT_RULES = HERE.parent / "prometheus" / "alerts.yml"

KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "and", "or", "unless", "atan2", "inf", "nan", "start", "end",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
COMMENT = re.compile(r"#[^\n]*")
GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
MATCHERS = re.compile(r"\{[^{}]*\}")
RANGE = re.compile(r"\[[^\[\]]*\]")
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
TOKEN = re.compile(r"\d[\w.]*|[A-Za-z_:][A-Za-z0-9_:]*|\S")
LABEL_VALUES = re.compile(r"^\s*label_values\s*\((.*),\s*[A-Za-z_]\w*\s*\)\s*$", re.S)
NAME_MATCHER = re.compile(r'__name__\s*=\s*"([A-Za-z_:][A-Za-z0-9_:]*)"')
QUERY_RESULT = re.compile(r"^\s*query_result\s*\((.*)\)\s*$", re.S)


def metric_names(expr):
    """The metric names one PromQL expression references."""
    text = STRING.sub('""', expr)
    text = COMMENT.sub(" ", text)
    text = GRAFANA_VARIABLE.sub(" ", text)
    text = MATCHERS.sub("{}", text)
    text = RANGE.sub("[]", text)
    text = GROUPING.sub(r"\1 ()", text)
    tokens = TOKEN.findall(text)
    names = set()
    for i, token in enumerate(tokens):
        if not (token[0].isalpha() or token[0] in "_:"):
            continue  # a number, a duration, an operator or punctuation
        if token in KEYWORDS:
            continue
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if following == "(" or following in ("by", "without"):
            continue  # a function, or an aggregation (`sum by (...) (...)` too)
        names.add(token)
    # A selector may name its metric as a matcher: {__name__="name"}.
    names.update(NAME_MATCHER.findall(expr))
    return names


def dashboard_expressions(path):
    """PromQL in a Grafana dashboard: every target `expr` (rows' panels
    included, wherever they nest) and the query variables' expressions."""
    dashboard = json.loads(Path(path).read_text())
    found = []

    def walk(node):
        if isinstance(node, dict):
            expr = node.get("expr")
            if isinstance(expr, str) and expr.strip():
                found.append(expr)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard.get("panels", []))
    walk(dashboard.get("annotations", {}))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if not isinstance(query, str):
            continue
        for form in (LABEL_VALUES, QUERY_RESULT):
            match = form.match(query)
            if match:
                found.append(match.group(1))
                break
        # label_values(label), label_names(), metrics(regex): no metric.
    return found


def rule_expressions(path):
    """The `expr` values of a Prometheus rules file, read without a YAML
    library: plain or quoted one-line values and `|`/`>` block scalars."""
    lines = Path(path).read_text().splitlines()
    found = []
    i = 0
    while i < len(lines):
        match = re.match(r"^(\s*)(?:-\s+)?expr:\s*(.*)$", lines[i])
        i += 1
        if not match:
            continue
        indent, value = len(match.group(1)), match.group(2).strip()
        if value.startswith(("|", ">")):
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i].strip())
                i += 1
            found.append("\n".join(block).strip())
        elif value[:1] in ("'", '"'):
            quote = value[0]
            body = value[1:-1] if value.endswith(quote) and len(value) > 1 else value[1:]
            found.append(body.replace("''", "'") if quote == "'" else json.loads(value))
        else:
            found.append(re.sub(r"\s+#.*$", "", value))
    return found


def base(name):
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dashboard", default=str(DEFAULT_DASHBOARD))
    parser.add_argument("--rules", default=str(DEFAULT_RULES))
    parser.add_argument("--exprs", action="store_true", help="print the expressions found instead")
    args = parser.parse_args()

    expressions = dashboard_expressions(args.dashboard) + rule_expressions(args.rules)
    if not expressions:
        print("metrics.py: no PromQL expressions found", file=sys.stderr)
        return 1
    if args.exprs:
        for expr in expressions:
            print(" ".join(expr.split()))
        return 0
    names = set()
    for expr in expressions:
        names |= metric_names(expr)
    for name in sorted(names):
        print(f"{name}\t{base(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
