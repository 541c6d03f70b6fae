"""Turbo distillation: an 8-step, guidance-free student from the base teacher (DMD2-style
distribution-matching distillation, a latent-space discriminator and a dynamic shift drawn from {1, 2, 3}).

Per step: draw a shift s and a turbo-table index i (SPEC §9.3); the student sees `x_{t_i}` (forward-noised
data, or with `backward_simulation_prob` the student's own trajectory from noise) and predicts `x0_hat = x -
t_i v`. The DMD gradient at a fresh noise level t' is `x0_fake(x_t') - x0_real(x_t')`, where the real score is
the frozen teacher with CFG and the fake score ("critic", initialised from the teacher) is trained by flow
matching on the student's samples; the student also fools a `LatentDiscriminator` on noised latents. Only the
student's DiT decoder trains; its condition encoder and tokenizers stay the teacher's, and it is saved with
`is_turbo=True`.

Run: `python -m encore.training.recipes.distill cache_dir=runs/latents teacher=runs/dit/checkpoints/step-N
output_dir=runs/distill max_steps=3000`
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from encore.errors import InvalidRequest
from encore.models.acestep import AceStepModel
from encore.sampling.schedules import VALID_SHIFTS, sample_training_timesteps, turbo_timesteps
from encore.training.discriminator import LatentDiscriminator
from encore.training.losses import discriminator_hinge_loss, generator_hinge_loss
from encore.training.objectives import (
    STREAM_FLOW,
    draw_flow,
    flow_matching_loss,
    item_generators,
    masked_item_mse,
)
from encore.training.recipes.base import Recipe, RecipeConfig, run_cli, step_generator
from encore.training.recipes.dit import (
    DiTTrainConfig,
    LatentCache,
    TextStates,
    build_item,
    build_text_encoder,
    collate_items,
    drop_outliers,
    load_dit_checkpoint,
)

log = logging.getLogger(__name__)

_STREAM_BATCH, _STREAM_DMD, _STREAM_ANCHOR = 13, 14, 15


@dataclass(frozen=True, kw_only=True)
class DistillConfig(RecipeConfig):
    """`python -m encore.training.recipes.distill`: turbo student from a base teacher."""

    cache_dir: str = ""
    teacher: str = ""
    """DiT recipe checkpoint folder of the base teacher, or a released base model (official or diffusers)."""
    text_encoder: str = "minilm"
    batch_size: int = 8
    crop_frames: int = 250
    learning_rate: float = 5e-5
    """Student (generator) learning rate."""
    critic_learning_rate: float = 5e-5
    """Fake-score critic learning rate. At 2e-4 (2-4x the student's) all six runs from our annealed embedded
    teacher collapsed within 45-200 steps: the critic's loss on the student's samples jumped from ~0.6 to
    5-12 and the discriminator then separated real from fake, with or without the adversarial term, CFG 3 or
    4, backward simulation or not. At the student's rate (5e-5) the same run stayed stable for 300 steps."""
    disc_learning_rate: float = 2e-4
    weight_decay: float = 0.0
    critic_steps: int = 2
    """Critic (fake score) updates per student update (two time-scale rule of DMD2)."""
    guidance_scale: float = 4.0
    """CFG scale of the teacher's real score (the student needs no CFG at inference)."""
    guide_hints: bool = False
    """The teacher's null branch also drops the beat/key hints (silence context), so its guidance amplifies
    the hints as well as the text, as the pipeline's base sampling does (`DiffusionOptions.guide_hints`).
    Off, both branches see the hints (the sixth to ninth releases' turbos)."""
    shifts: tuple[float, ...] = VALID_SHIFTS
    dmd_weight: float = 1.0
    dmd_min_t: float = 0.0
    """Lowest noise level of the DMD score comparison (and the discriminator's noising): the training draw `t` is
    mapped to `dmd_min_t + (1 - dmd_min_t) t`. Near t = 0 both scores are close to the identity and their
    difference, divided by DMD's small normaliser there, is mostly the critic's and teacher's fitting error."""
    adversarial_weight: float = 0.05
    flow_weight: float = 0.0
    """Weight of a flow-matching loss of the student on the real batch (the teacher's own objective, no condition
    dropout), an anchor to the data. Without it the student of our small hinted teacher left the data manifold
    within 30-100 steps: its one-step samples grew to 4-7x the data's std as near-white noise, where neither the
    teacher nor the lagging critic scores point back (with or without CFG or backward simulation)."""
    backward_simulation_prob: float = 0.5
    task_weights: tuple[float, ...] = (0.5, 0.15, 0.15, 0.05, 0.1, 0.05)
    meta_dropout: float = 0.3
    reference_prob: float = 0.1
    disc_width: int = 128
    text_cache_size: int = 4096
    tempo_stretch: float = 0.0
    """As in the DiT recipe: probability of re-timing an item's latents, bpm and captions."""
    tempo_stretch_max: float = 1.2
    beat_hint_prob: float = 0.0
    """As in the DiT recipe: probability of conditioning a text2music item on beat hints. Needs a teacher trained
    with them (config ``beat_hints``), whose flag the student inherits."""
    key_hint_prob: float = 0.0
    """As in the DiT recipe: probability that the hints also carry the item's key (teacher config ``key_hints``)."""
    instrument_hint_prob: float = 0.0
    """As in the DiT recipe: probability that the hints also carry the caption's instruments (teacher config
    ``instrument_hints``)."""
    max_latent_std: float | None = None
    """As in the DiT recipe: drop clips whose mix latents have a larger std."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the student's DiT with this decay (0 = off). The checkpoint then
    holds it as ``student_ema`` and `load_dit_checkpoint` returns it: the adversarial student can swing or
    collapse within tens of steps, and the average damps that."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.ema_decay < 1.0:
            raise InvalidRequest("ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        object.__setattr__(self, "shifts", tuple(float(s) for s in self.shifts))
        object.__setattr__(self, "task_weights", tuple(float(w) for w in self.task_weights))
        if not self.shifts or any(s not in VALID_SHIFTS for s in self.shifts):
            raise InvalidRequest("shifts", f"must be a non-empty subset of {VALID_SHIFTS}, got {self.shifts}")
        if not 0.0 <= self.dmd_min_t < 1.0:
            raise InvalidRequest("dmd_min_t", f"must be in [0, 1), got {self.dmd_min_t}")
        if self.flow_weight < 0:
            raise InvalidRequest("flow_weight", f"must be >= 0, got {self.flow_weight}")
        if self.critic_steps < 1:
            raise InvalidRequest("critic_steps", f"must be >= 1, got {self.critic_steps}")
        if not 0.0 <= self.backward_simulation_prob <= 1.0:
            raise InvalidRequest("backward_simulation_prob", "must be in [0, 1]")

    def data_config(self) -> DiTTrainConfig:
        """The DiT-recipe view used to draw batch items (same omni-task construction)."""
        return DiTTrainConfig(
            output_dir=self.output_dir,
            crop_frames=self.crop_frames,
            task_weights=self.task_weights,
            meta_dropout=self.meta_dropout,
            reference_prob=self.reference_prob,
            cfg_dropout=0.0,
            tempo_stretch=self.tempo_stretch,
            tempo_stretch_max=self.tempo_stretch_max,
            beat_hint_prob=self.beat_hint_prob,
            key_hint_prob=self.key_hint_prob,
            instrument_hint_prob=self.instrument_hint_prob,
            max_latent_std=self.max_latent_std,
        )


def x0_from_velocity(x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """`x0 = x_t - t v` with `t` `[B]` (SPEC §9.1)."""
    return x_t - t[:, None, None] * v


def renoise(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """`x_t = t noise + (1 - t) x0` with `t` `[B]`."""
    tt = t[:, None, None]
    return tt * noise + (1 - tt) * x0


class DistillRecipe(Recipe[DistillConfig]):
    """DMD2-style turbo distillation (see module docstring)."""

    name = "distill"

    def __init__(self, config: DistillConfig, *, cache: LatentCache | None = None) -> None:
        super().__init__(config)
        self.cache = cache

    def build(self) -> None:
        cfg = self.config
        self.cache = drop_outliers(LatentCache.given_or_loaded(self.cache, cfg.cache_dir), cfg.max_latent_std)
        if not cfg.teacher:
            raise InvalidRequest("teacher", "needs the base DiT checkpoint folder")
        self.teacher = load_dit_checkpoint(cfg.teacher).to(self.device).requires_grad_(False)
        if cfg.beat_hint_prob and not self.teacher.config.beat_hints:
            raise InvalidRequest("beat_hint_prob", f"the teacher {cfg.teacher} was not trained with beat hints")
        if cfg.key_hint_prob and not self.teacher.config.key_hints:
            raise InvalidRequest("key_hint_prob", f"the teacher {cfg.teacher} was not trained with key hints")
        if cfg.instrument_hint_prob and not self.teacher.config.instrument_hints:
            raise InvalidRequest("instrument_hint_prob",
                                 f"the teacher {cfg.teacher} was not trained with instrument hints")
        turbo = dataclasses.replace(self.teacher.config, is_turbo=True, model_version="turbo")
        self.student = AceStepModel(turbo).to(self.device)
        self.student.load_state_dict(self.teacher.state_dict())
        self.student.requires_grad_(False)
        self.student.decoder.requires_grad_(True)
        self.student_ema = copy.deepcopy(self.student).requires_grad_(False) if cfg.ema_decay else None
        self.critic = copy.deepcopy(self.teacher.decoder).requires_grad_(True)
        with torch.random.fork_rng(devices=[]):  # discriminator init only; the caller's RNG is restored
            torch.manual_seed(cfg.seed)
            self.disc = LatentDiscriminator(turbo.audio_acoustic_hidden_dim, cfg.disc_width).to(self.device)
        encoder, tokenizer = build_text_encoder(cfg.text_encoder, turbo.text_hidden_dim)
        self.text_states = TextStates(encoder.to(self.device), tokenizer, cfg.text_cache_size, self.device)
        self.data_config = cfg.data_config()
        self.student_opt = torch.optim.AdamW(
            self.student.decoder.parameters(),
            lr=cfg.learning_rate,
            betas=(0.0, 0.99),
            weight_decay=cfg.weight_decay,
        )
        self.critic_opt = torch.optim.AdamW(
            self.critic.parameters(), lr=cfg.critic_learning_rate, betas=(0.0, 0.99)
        )
        self.disc_opt = torch.optim.AdamW(
            self.disc.parameters(), lr=cfg.disc_learning_rate, betas=(0.0, 0.99)
        )

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        modules = {"student": self.student, "critic": self.critic, "disc": self.disc}
        if self.student_ema is not None:
            modules["student_ema"] = self.student_ema
        return modules

    def checkpoint_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"student": self.student_opt, "critic": self.critic_opt, "disc": self.disc_opt}

    def extra_state(self) -> dict[str, Any]:
        return {"dit_config": self.student.config.to_dict(), "teacher": self.config.teacher}

    # ------------------------------------------------------------------ pieces
    def _teacher_velocity(
        self, x: Tensor, t: Tensor, states: Tensor, context: Tensor, hint_free: Tensor
    ) -> Tensor:
        """Teacher velocity with CFG (`v_u + g (v_c - v_u)`), cond and null in one batched call; the null
        branch gets `hint_free` as its context with `guide_hints`."""
        null = self.teacher.null_condition(states)
        v = self.teacher.decoder(
            torch.cat([x, x]),
            torch.cat([t, t]),
            torch.cat([t, t]),
            torch.cat([states, null]),
            torch.cat([context, hint_free if self.config.guide_hints else context]),
        )
        v_c, v_u = v.chunk(2)
        return v_u + self.config.guidance_scale * (v_c - v_u)

    @torch.no_grad()
    def _student_input(
        self,
        x0: Tensor,
        states: Tensor,
        context: Tensor,
        schedule: Tensor,
        index: int,
        gen: torch.Generator,
        simulate: bool,
    ) -> Tensor:
        """`x_{t_index}`: forward-noised data, or the student's own ODE trajectory from pure noise."""
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        batch = x0.shape[0]
        if not simulate:
            return renoise(x0, noise, schedule[index].expand(batch).to(x0))
        x = noise
        for j in range(index):
            t = schedule[j].expand(batch).to(x0)
            v = self.student.decoder(x, t, t, states, context)
            x = x - v * (schedule[j] - schedule[j + 1]).to(x0)
        return x

    def _critic_step(
        self, x0_hat: Tensor, states: Tensor, context: Tensor, mask: Tensor, step: int, k: int
    ) -> tuple[float, float]:
        """One flow-matching update of the critic on the student's samples; returns its loss on this draw
        before and after the update."""
        gens = item_generators(self.config.seed, step, range(x0_hat.shape[0]), STREAM_FLOW + 100 + k)
        draw = draw_flow(gens, x0_hat.shape[1], x0_hat.shape[2], cfg_dropout=0.0)
        null = self.teacher.null_condition_emb
        loss = flow_matching_loss(self.critic, x0_hat, context, states, null, draw, mask).mean()
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.clip_gradients(self.critic.parameters())
        self.critic_opt.step()
        with torch.no_grad():
            after = flow_matching_loss(self.critic, x0_hat, context, states, null, draw, mask).mean()
        return loss.item(), after.item()

    def _disc_step(self, real: Tensor, fake: Tensor, t: Tensor, noise: Tensor) -> float:
        real_logits, _ = self.disc(renoise(real, noise, t), t)
        fake_logits, _ = self.disc(renoise(fake, noise, t), t)
        loss = discriminator_hinge_loss(real_logits, fake_logits)
        self.disc_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.disc_opt.step()
        return loss.item()

    # ------------------------------------------------------------------ step
    def _batch(self, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(x0, condition states, context, frame mask, hint-free context) of one batch drawn from `gen`
        (conditions frozen)."""
        assert self.cache is not None
        items = [
            build_item(
                self.cache.clips[int(torch.randint(len(self.cache.clips), (1,), generator=gen))],
                self.cache,
                self.data_config,
                gen,
            )
            for _ in range(self.config.batch_size)
        ]
        with torch.no_grad():
            batch = collate_items(self.teacher, items, self.text_states, self.cache.silence, self.device)
        return (batch.target, batch.encoder_hidden_states, batch.context, batch.frame_mask,
                batch.hint_free_context)

    @torch.no_grad()
    def evaluate(self, seed: int = 2**31 - 1, shift: float = 3.0, index: int = 4) -> dict[str, float]:
        """Fixed-draw diagnostics: the critic's flow loss on the student's current outputs and the DMD score
        gap `mean |x0_fake - x0_real|` (both fall as the critic tracks the student and the student nears the
        teacher)."""
        x0, states, context, mask, hint_free = self._batch(step_generator(seed, 0, _STREAM_BATCH))
        gen = step_generator(seed, 0, _STREAM_DMD)
        schedule = turbo_timesteps(shift)
        x_t = self._student_input(x0, states, context, schedule, index, gen, False)
        t = schedule[index].expand(x0.shape[0]).to(x0)
        x0_hat = x0_from_velocity(x_t, t, self.student.decoder(x_t, t, t, states, context))
        gens = item_generators(seed, 0, range(x0.shape[0]), STREAM_FLOW)
        draw = draw_flow(gens, x0.shape[1], x0.shape[2], cfg_dropout=0.0)
        critic = flow_matching_loss(
            self.critic, x0_hat, context, states, self.teacher.null_condition_emb, draw, mask
        )
        t2 = sample_training_timesteps(x0.shape[0], generator=gen).to(x0)
        x_t2 = renoise(x0_hat, torch.randn(x0.shape, generator=gen).to(x0), t2)
        x0_real = x0_from_velocity(x_t2, t2, self._teacher_velocity(x_t2, t2, states, context, hint_free))
        x0_fake = x0_from_velocity(x_t2, t2, self.critic(x_t2, t2, t2, states, context))
        return {"critic": critic.mean().item(), "dmd_gap": (x0_fake - x0_real).abs().mean().item()}

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.config
        x0, states, context, mask, hint_free = self._batch(step_generator(cfg.seed, step, _STREAM_BATCH))
        draw = step_generator(cfg.seed, step, _STREAM_DMD)
        shift = cfg.shifts[int(torch.randint(len(cfg.shifts), (1,), generator=draw))]
        schedule = turbo_timesteps(shift)
        index = int(torch.randint(len(schedule), (1,), generator=draw))
        simulate = float(torch.rand((1,), generator=draw)) < cfg.backward_simulation_prob
        x_t = self._student_input(x0, states, context, schedule, index, draw, simulate)
        t = schedule[index].expand(x0.shape[0]).to(x0)

        self.student.decoder.train()
        x0_hat = x0_from_velocity(x_t, t, self.student.decoder(x_t, t, t, states, context))
        t2 = sample_training_timesteps(x0.shape[0], generator=draw).to(x0)
        if cfg.dmd_min_t:
            t2 = cfg.dmd_min_t + (1.0 - cfg.dmd_min_t) * t2
        noise2 = torch.randn(x0.shape, generator=draw).to(x0)
        with torch.no_grad():
            x_t2 = renoise(x0_hat.detach(), noise2, t2)
            x0_real = x0_from_velocity(x_t2, t2, self._teacher_velocity(x_t2, t2, states, context, hint_free))
            x0_fake = x0_from_velocity(x_t2, t2, self.critic(x_t2, t2, t2, states, context))
            # DMD normaliser: mean |x0_hat - x0_real| per item
            weight = 1.0 / (x0_hat.detach() - x0_real).abs().mean(dim=(1, 2), keepdim=True).clamp_min(1e-4)
            grad = (x0_fake - x0_real) * weight
        dmd = 0.5 * masked_item_mse(x0_hat, (x0_hat - grad).detach(), mask).mean()
        logits, _ = self.disc(renoise(x0_hat, noise2, t2), t2)
        adv = generator_hinge_loss(logits)
        loss = cfg.dmd_weight * dmd + cfg.adversarial_weight * adv
        flow = torch.zeros(())
        if cfg.flow_weight:
            gens = item_generators(cfg.seed, step, range(x0.shape[0]), _STREAM_ANCHOR)
            anchor = draw_flow(gens, x0.shape[1], x0.shape[2], cfg_dropout=0.0)
            null = self.teacher.null_condition_emb
            flow = flow_matching_loss(self.student.decoder, x0, context, states, null, anchor, mask).mean()
            loss = loss + cfg.flow_weight * flow
        self.student_opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = self.clip_gradients(self.student.decoder.parameters())
        self.student_opt.step()
        if self.student_ema is not None:
            with torch.no_grad():
                for avg, param in zip(self.student_ema.decoder.parameters(), self.student.decoder.parameters()):
                    avg.lerp_(param, 1.0 - cfg.ema_decay)

        fake = x0_hat.detach()
        critic = [self._critic_step(fake, states, context, mask, step, k) for k in range(cfg.critic_steps)]
        disc = self._disc_step(x0, fake, t2, noise2)
        return {
            "loss": loss.item(),
            "dmd": dmd.item(),
            "adv": adv.item(),
            "flow": flow.item(),
            "critic": critic[-1][0],
            "critic_after": critic[-1][1],
            "disc": disc,
            "grad_norm": grad_norm,
            "student_std": fake.std().item(),
            "data_std": x0.std().item(),
            "shift": shift,
            "dmd_t": t2.mean().item(),
            "t_index": float(index),
            "simulated": float(simulate),
        }


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(DistillConfig, DistillRecipe, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    raise SystemExit(main())
