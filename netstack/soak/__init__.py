"""Soak tests as a product command: `netstack soak --duration SECONDS [--out DIR] [rates...]`.

world.py builds the namespace (stack, impairment relay, Prometheus), generators.py the bounded
hping3 / nc / ping load, schedule.py the phases, sampler.py the series, criteria.py the pure
pass/fail checks, report.py the Markdown/JSON/PNG report, runner.py the command.
"""
