#!/usr/bin/env python3
"""One markdown table for several servers measured in the same session.

Reads result JSON of both generators: the Socket.IO peer's Node generator
(loadgen/run-scenario.js, camelCase fields) and chatmesh-bench (snake_case), so
BENCHMARKS.md's comparison comes from the result files and not from hand copying.

    compare.py NAME=FILE.json [NAME=FILE.json ...] > compare.md
"""
import json
import sys


def servers_node(r):
    return [k for k in r["memory"]["idle"] if not k.startswith("gen-") and k != "redis"]


def rows(name, r):
    """(name, rate, deliveries/s, p50, p99, server µs/delivery, server RSS MB each, foreign %, pass)."""
    out = []
    if "steps" in r and r["steps"] and "deliveriesPerSec" in r["steps"][0]:  # Node generator
        srv = servers_node(r)
        for s in r["steps"]:
            if not s.get("record", True):
                continue
            rss = " / ".join(f"{s['rssMaxMB'].get(k, 0):.1f}" for k in srv)
            out.append((name, s["rate"], s["deliveriesPerSec"], s["latencyMs"]["p50"],
                        s["latencyMs"]["p99"], s.get("serverCpuUsPerDelivery"), rss,
                        s["foreignCpuPercent"], s["pass"]))
        sat = r["saturation"]
        best = (sat.get("maxSustainableRate"), sat.get("maxSustainableDeliveriesPerSec"),
                sat.get("firstFailRate"))
    else:  # chatmesh-bench
        for s in r["steps"]:
            if not s.get("recorded", True):
                continue
            nodes = sorted(k for k in s["rss_max_bytes"] if k.startswith("node-"))
            rss = " / ".join(f"{s['rss_max_bytes'][k] / 1048576:.1f}" for k in nodes)
            out.append((name, s["rate"], s["deliveries_per_sec"], s["latency"]["p50_ms"],
                        s["latency"]["p99_ms"], s.get("server_cpu_us_per_delivery"), rss,
                        s["foreign_cpu_percent"], s["pass"]))
        sat = r.get("saturation") or {}
        best = (sat.get("max_sustainable_rate"), sat.get("max_sustainable_deliveries_per_sec"),
                sat.get("first_fail_rate"))
    return out, best


def num(x, nd=1):
    if x is None:
        return "-"
    return f"{x:,.{nd}f}".rstrip("0").rstrip(".") if nd else f"{x:,.0f}"


def main(args):
    table, summary = [], []
    for arg in args:
        name, _, path = arg.partition("=")
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
        rs, best = rows(name, r)
        table += rs
        summary.append(f"| {name} | {num(best[0], 0)} msg/s = **{num(best[1], 0)}** deliveries/s "
                       f"| {num(best[2], 0)} |")
    print("| server | rate msg/s | deliveries/s | p50 ms | p99 ms | server CPU µs/delivery "
          "| server RSS max MB (each) | foreign CPU % | pass |")
    print("|---|---:|---:|---:|---:|---:|---|---:|:-:|")
    for t in table:
        print(f"| {t[0]} | {num(t[1], 0)} | {num(t[2], 0)} | {num(t[3], 2)} | {num(t[4], 1)} "
              f"| {num(t[5], 1)} | {t[6]} | {num(t[7], 1)} | {'yes' if t[8] else 'NO'} |")
    print()
    print("| server | max sustainable | first failing rate |")
    print("|---|---|---:|")
    print("\n".join(summary))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
