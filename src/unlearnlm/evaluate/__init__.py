"""The evaluation suite: forgetting, fluency, downstream tasks, privacy, judge, harness backend."""

from unlearnlm.evaluate.suite import DEFAULT_TASKS, evaluate, resolve_tasks, write_results

__all__ = ["DEFAULT_TASKS", "evaluate", "resolve_tasks", "write_results"]
