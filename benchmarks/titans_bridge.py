"""Adapters from the benchmarks to titans (CLI / Python API). Filled in against the real API once it
lands; until then `embedder()` and friends return None and the titans rows say "pending"."""

from __future__ import annotations

import common


def embedder():
    if common.titans_cmd() is None or not common.titans_subcommand_ok(common.titans_cmd(), "embed"):
        return None
    return None
