"""`encore eval` command: argument handling and a real run on a tiny random checkpoint (no renders)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.eval_synth import synth_prompt_set
from helpers.tiny_pipeline import write_tiny

from encore.errors import CheckpointError, InvalidRequest
from encore.eval.prompts import save_prompt_set
from encore.frontends import cli, eval_cli


def _parse(argv: list[str]):
    parser = cli.CliParser(prog="encore")
    eval_cli.register(parser.add_subparsers(dest="command", parser_class=cli.CliParser))
    return parser.parse_args(["eval", *argv])


def test_defaults_and_missing_corpus() -> None:
    args = _parse([])
    assert args.systems == ["base-50", "turbo-8", "random"] and args.out == Path("eval-out")
    assert args.sequential is False and _parse(["--sequential"]).sequential is True
    with pytest.raises(InvalidRequest, match="--corpus"):
        args.func(args)


def test_write_prompts_takes_a_validation_seed(tmp_path: Path, monkeypatch, capsys) -> None:
    from encore.eval import prompts as prompt_module

    seeds = []

    def fake_make(num_prompts: int, *, seed: int = prompt_module.EVAL_SEED):  # the real one renders audio
        seeds.append(seed)
        return synth_prompt_set()

    monkeypatch.setattr(prompt_module, "make_prompt_set", fake_make)
    for extra, expected in (([], prompt_module.EVAL_SEED), (["--prompt-set-seed", "777"], 777)):
        args = _parse(["--write-prompts", str(tmp_path / "p.json"), "--num-prompts", "3", *extra])
        assert args.func(args) == cli.EXIT_OK
        assert seeds[-1] == expected and f"corpus seed {expected}" in capsys.readouterr().out
    args = _parse(["--prompt-set-seed", "777", "--corpus", str(tmp_path)])
    with pytest.raises(InvalidRequest, match="--prompt-set-seed"):
        args.func(args)


def test_tiny_checkpoint_run_writes_the_report(synth_corpus: Path, tmp_path: Path, capsys) -> None:
    write_tiny(tmp_path / "ckpt")
    prompts = save_prompt_set(synth_prompt_set(), tmp_path / "prompts.json")
    out = tmp_path / "out"
    common = ["--checkpoint", str(tmp_path / "ckpt"), "--corpus", str(synth_corpus), "--out", str(out),
              "--prompts", str(prompts), "--no-renders", "--limit", "2", "--duration", "4", "--device", "cpu"]  # fmt: skip
    args = _parse([*common, "--systems", "turbo", "random", "--json", "--sequential"])
    assert args.func(args) == cli.EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in report["systems"]] == ["turbo", "random"]
    assert all(s["num_items"] == 2 and s["seconds_per_item"] > 0 for s in report["systems"])
    assert (out / "eval.md").is_file() and (out / "random-checkpoint" / ".complete").is_file()
    args = _parse([*common, "--systems", "base-2"])  # the checkpoint has no base DiT
    with pytest.raises(CheckpointError, match="base"):
        args.func(args)


def test_random_floor_checkpoint_is_rewritten_for_another_seed_and_guards_foreign_folders(
    tmp_path: Path,
) -> None:
    from encore.eval.run import random_pipeline_like

    ckpt = write_tiny(tmp_path / "ckpt")
    dest = tmp_path / "floor"
    first = random_pipeline_like(ckpt, dest, device="cpu")
    assert first.config == random_pipeline_like(ckpt, dest, device="cpu").config
    marker = (dest / ".complete").read_text()
    random_pipeline_like(ckpt, dest, seed=1, device="cpu")
    assert (dest / ".complete").read_text() != marker and "seed 1" in (dest / ".complete").read_text()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(InvalidRequest, match="not a finished"):
        random_pipeline_like(ckpt, foreign, device="cpu")
    assert (foreign / "keep.txt").read_text() == "mine"
