"""Shared planner fixtures: one offline tokenizer, a tiny random planner and its constraint tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerBase

from encore.models.planner import Planner
from encore.pipeline.planning import constraint_tables
from encore.pipeline.random_planner import build_tokenizer, random_planner, write_random_planner
from encore.sampling.constrained import ConstraintTables


@pytest.fixture(scope="session")
def planner_tokenizer() -> PreTrainedTokenizerBase:
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_planner(planner_tokenizer: PreTrainedTokenizerBase) -> Planner:
    return random_planner(geometry="tiny", seed=0, tokenizer=planner_tokenizer)


@pytest.fixture(scope="session")
def tables(tiny_planner: Planner) -> ConstraintTables:
    return constraint_tables(tiny_planner)


@pytest.fixture(scope="session")
def planner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_planner(tmp_path_factory.mktemp("planner") / "acestep-5Hz-lm-tiny", seed=0)
