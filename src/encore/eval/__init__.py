"""Evaluation of generated music against held-out prompts (`encore eval`).

`prompts` holds the fixed prompt set, `analysis` tempo/key scoring, `features` + `probe` the instrument
classifier, `frechet` the Fréchet distance, `run.run_eval` the whole evaluation and `report` its table.
"""
