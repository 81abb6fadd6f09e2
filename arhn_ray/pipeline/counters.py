"""The run's counters on Ray's own metrics (``ray.util.metrics``): the Ray dashboard, and
Prometheus / Grafana scraping each node's metrics endpoint, show a long run's progress.

Counted at the driver, where every row arrives: rows written by outcome, negatives by action,
LLM tokens by stage and kind, rows rejected for an engine error. Each series carries the
run's output path as a tag, so two runs on one cluster stay apart.
"""

from __future__ import annotations

from collections import Counter

ENGINE_ERRORS = ("engine_error", "refine_error")  # rejection reasons that mean an LLM call failed


class RunMetrics:
    def __init__(self, output: str):
        from ray.util.metrics import Counter as RayCounter

        self.output = output
        self.rows = RayCounter("arhn_rows", "rows written, by outcome (refined or rejected)", tag_keys=("output", "outcome"))
        self.negatives = RayCounter(
            "arhn_negatives", "negatives decided, by action (relabel, filter, keep)", tag_keys=("output", "action")
        )
        self.tokens = RayCounter(
            "arhn_llm_tokens", "LLM tokens of the rows written, by stage and kind", tag_keys=("output", "stage", "kind")
        )
        self.cut = RayCounter(
            "arhn_llm_cut_calls", "LLM calls cut by max_tokens (finish reason length), by stage", tag_keys=("output", "stage")
        )
        self.engine_errors = RayCounter("arhn_engine_errors", "rows rejected because an LLM call failed", tag_keys=("output",))
        self.last: Counter = Counter()

    def update(self, sink) -> None:
        """Adds what the writer counted since the last call."""
        c = sink.counts
        now: Counter = Counter()
        now[("rows", "refined")] = c["queries"]
        now[("rows", "rejected")] = c["rejected"]
        for action in ("relabel", "filter", "keep"):
            now[("negatives", action)] = c[action]
        for stage in (1, 2):
            for kind in ("prompt", "output"):
                now[("tokens", f"stage{stage}", kind)] = c[f"stage{stage}_{kind}_tokens"]
            now[("cut", f"stage{stage}")] = c[f"stage{stage}_cut"]
        now[("engine_errors",)] = sum(n for reason, n in sink.total.rejected_reasons.items() if reason in ENGINE_ERRORS)
        for key, value in now.items():
            delta = value - self.last[key]
            if delta <= 0:
                continue
            tags = {"output": self.output}
            if key[0] == "rows":
                self.rows.inc(delta, {**tags, "outcome": key[1]})
            elif key[0] == "negatives":
                self.negatives.inc(delta, {**tags, "action": key[1]})
            elif key[0] == "tokens":
                self.tokens.inc(delta, {**tags, "stage": key[1], "kind": key[2]})
            elif key[0] == "cut":
                self.cut.inc(delta, {**tags, "stage": key[1]})
            else:
                self.engine_errors.inc(delta, tags)
        self.last = now
