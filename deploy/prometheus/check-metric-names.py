#!/usr/bin/env python3
"""Check that every metric name used by alerts.yaml and dashboard.json exists in a scrape.

Usage:
    check-metric-names.py SCRAPE [--alerts FILE] [--dashboard FILE] [--strict]
    curl -s http://127.0.0.1:8080/metrics | check-metric-names.py -

SCRAPE is a file holding a /metrics answer (Prometheus text format 0.0.4 or OpenMetrics),
or `-` for standard input. --alerts and --dashboard default to the files next to this script.

A name counts as present when a sample of it is in the scrape, or when a `# TYPE` line
declares its family: a counter `x` provides `x` and `x_total`, a histogram `x` provides
`x_bucket`, `x_sum` and `x_count`, a summary `x_sum` and `x_count` (a labelled family with
no series yet is exposed by its TYPE line alone). With --strict only samples count.
`up` and the other series Prometheus adds to every scrape (scrape_*) are always present.

Names are taken from every `expr` of alerts.yaml (alerting and recording rules), every
`expr` field of dashboard.json, and the dashboard's query variables (label_values(metric,
label), query_result(expr)). PromQL functions, aggregations, keywords, label names (in
{...}, by/without/on/ignoring/group_left/group_right (...)), strings, numbers, durations,
ranges and Grafana variables ($x, ${x}, [[x]]) are not metric names. A name given only as
{__name__="x"} is checked too.

Prints each missing name with where it is used and exits 1; exits 0 when none is missing,
2 on a usage or input error.
"""

import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# Series Prometheus itself attaches to every scrape.
SYNTHETIC = {
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
}

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}
# Keywords followed by a parenthesised list of label names.
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
OTHER_KEYWORDS = {"and", "or", "unless", "offset", "bool", "atan2", "inf", "nan"}

IDENT = r"[A-Za-z_:][A-Za-z0-9_:]*"
TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<gvar>\$\{[^}]*\}|\$[A-Za-z0-9_]+|\[\[[^\]]*\]\])
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?[A-Za-z0-9_]*)
  | (?P<ident>""" + IDENT + r""")
  | (?P<punct>=~|!~|!=|==|<=|>=|[{}()\[\],=<>+\-*/%^@])
  | (?P<other>.)
    """,
    re.VERBOSE,
)


def tokenize(expr):
    out = []
    for m in TOKEN.finditer(expr):
        kind = m.lastgroup
        if kind in ("ws", "comment"):
            continue
        out.append((kind, m.group()))
    return out


def skip_balanced(tokens, i, open_, close):
    """tokens[i] is `open_`: return the index just past its matching `close`."""
    depth = 0
    while i < len(tokens):
        if tokens[i] == ("punct", open_):
            depth += 1
        elif tokens[i] == ("punct", close):
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


def unquote(s):
    if s[0] == "`":
        return s[1:-1]
    return re.sub(r"\\(.)", r"\1", s[1:-1])


def metric_names(expr):
    """The metric names a PromQL expression selects."""
    tokens = tokenize(expr)
    names = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if kind == "punct" and text == "{":
            end = skip_balanced(tokens, i, "{", "}")
            inner = tokens[i + 1:end - 1]
            for j in range(len(inner) - 2):
                if inner[j] == ("ident", "__name__") and inner[j + 1] == ("punct", "=") \
                        and inner[j + 2][0] == "string":
                    names.add(unquote(inner[j + 2][1]))
            i = end
            continue
        if kind == "punct" and text == "[":
            i = skip_balanced(tokens, i, "[", "]")
            continue
        if kind == "ident":
            low = text.lower()
            if low in LABEL_LIST_KEYWORDS:
                i += 1
                if nxt == ("punct", "("):
                    i = skip_balanced(tokens, i, "(", ")")
                continue
            if low in OTHER_KEYWORDS or low in AGGREGATIONS:
                i += 1
                continue
            if nxt == ("punct", "("):  # a function call
                i += 1
                continue
            names.add(text)
        i += 1
    return names


def grafana_query_names(query):
    """Metric names of a Grafana Prometheus variable query."""
    q = query.strip()
    m = re.match(r"label_values\s*\((.*)\)\s*$", q, re.S)
    if m:
        args = m.group(1)
        # label_values(label) has no metric; label_values(selector, label) has one.
        if "," not in args:
            return set()
        selector = args.rsplit(",", 1)[0]
        return metric_names(selector)
    m = re.match(r"query_result\s*\((.*)\)\s*$", q, re.S)
    if m:
        return metric_names(m.group(1))
    # label_names(), metrics(regex): no fixed metric name to check.
    return set()


def parse_scrape(text):
    """(names with samples, names provided by TYPE declarations)."""
    samples, declared = set(), set()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                name, typ = parts[2], parts[3].lower()
                declared.add(name)
                if typ == "counter":
                    declared.update({name + "_total", name + "_created"})
                elif typ == "histogram":
                    declared.update(name + s for s in ("_bucket", "_sum", "_count", "_created"))
                elif typ == "gaugehistogram":
                    declared.update(name + s for s in ("_bucket", "_gsum", "_gcount"))
                elif typ == "summary":
                    declared.update(name + s for s in ("_sum", "_count", "_created"))
            continue
        m = re.match(IDENT, line)
        if m:
            samples.add(m.group())
            continue
        m = re.match(r'\{\s*"((?:[^"\\]|\\.)*)"', line)  # UTF-8 names: {"name", ...}
        if m:
            samples.add(unquote('"' + m.group(1) + '"'))
    return samples, declared


def load_yaml(path):
    try:
        import yaml  # PyYAML, when present
    except ImportError:
        return None
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def alert_exprs(path):
    """[(where, expr)] for every rule of a Prometheus rule file."""
    doc = load_yaml(path)
    out = []
    if doc is not None:
        for group in doc.get("groups") or []:
            for rule in group.get("rules") or []:
                name = rule.get("alert") or rule.get("record") or "?"
                out.append((f"{os.path.basename(path)}: {name}", str(rule.get("expr", ""))))
        return out
    # Without PyYAML: `expr:` as a plain scalar or a |/> block scalar.
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    name = "?"
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"\s*-?\s*(?:alert|record):\s*(.+?)\s*$", line)
        if m:
            name = m.group(1).strip("'\"")
        m = re.match(r"(\s*)-?\s*expr:\s*(.*?)\s*$", line)
        if m:
            value = m.group(2)
            if value[:1] in ("|", ">"):
                indent = len(m.group(1))
                block = []
                i += 1
                while i < len(lines) and (not lines[i].strip()
                                          or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    block.append(lines[i])
                    i += 1
                out.append((f"{os.path.basename(path)}: {name}", "\n".join(block)))
                continue
            if value[:1] in ("'", '"'):
                value = value[1:-1]
            out.append((f"{os.path.basename(path)}: {name}", value))
        i += 1
    return out


def dashboard_exprs(path):
    """([(where, expr)], [(where, variable query)]) from a Grafana dashboard."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    exprs = []

    def walk(node, title):
        if isinstance(node, dict):
            title = node.get("title", title) if isinstance(node.get("title"), str) else title
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    exprs.append((f"{os.path.basename(path)}: panel {title!r}", value))
                elif key != "templating":
                    walk(value, title)
        elif isinstance(node, list):
            for item in node:
                walk(item, title)

    walk(doc, doc.get("title", "?"))
    queries = []
    for var in (doc.get("templating") or {}).get("list") or []:
        if var.get("type") != "query":
            continue
        q = var.get("query")
        if isinstance(q, dict):
            q = q.get("query", "")
        if isinstance(q, str) and q:
            queries.append((f"{os.path.basename(path)}: variable ${var.get('name')}", q))
    return exprs, queries


def main():
    ap = argparse.ArgumentParser(
        description="Check that the metric names used by alerts.yaml and dashboard.json "
                    "exist in a /metrics scrape.")
    ap.add_argument("scrape", help="file with a /metrics answer, or - for stdin")
    ap.add_argument("--alerts", default=os.path.join(HERE, "alerts.yaml"))
    ap.add_argument("--dashboard", default=os.path.join(HERE, "dashboard.json"))
    ap.add_argument("--strict", action="store_true",
                    help="count only names that have samples, not TYPE declarations")
    args = ap.parse_args()

    try:
        if args.scrape == "-":
            text = sys.stdin.read()
        else:
            with open(args.scrape, encoding="utf-8") as f:
                text = f.read()
        used = alert_exprs(args.alerts)
        exprs, queries = dashboard_exprs(args.dashboard)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    used += exprs

    samples, declared = parse_scrape(text)
    present = samples | SYNTHETIC | (set() if args.strict else declared)

    where = {}
    for origin, expr in used:
        for name in metric_names(expr):
            where.setdefault(name, []).append(origin)
    for origin, query in queries:
        for name in grafana_query_names(query):
            where.setdefault(name, []).append(origin)

    if not where:
        print("error: no metric names found in the alerts or the dashboard", file=sys.stderr)
        return 2

    missing = sorted(n for n in where if n not in present)
    for name in missing:
        origins = sorted(set(where[name]))
        print(f"missing: {name}  (used in: {'; '.join(origins)})")
    if missing:
        print(f"{len(missing)} of {len(where)} metric names missing from the scrape")
        return 1
    print(f"ok: all {len(where)} metric names used are in the scrape")
    return 0


if __name__ == "__main__":
    sys.exit(main())
