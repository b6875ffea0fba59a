"""R2M inside TRL's GRPO (trl 1.16): `R2MGRPOTrainer` runs the paper's online protocol
(docs/method.md, "Online training") with five lines of user code:

    from r2m_client import R2MClient
    from r2m_client.integrations.trl import R2MGRPOTrainer

    trainer = R2MGRPOTrainer(model=model, args=grpo_config, train_dataset=dataset,
                             processing_class=tokenizer, r2m=R2MClient("http://r2m:8000"))
    trainer.train()

Each optimizer step t:
1. TRL samples K = `num_generations` completions per prompt.
2. Annotate: `R2MReward` scores every completion with the policy's last-layer hidden states at
   step t; TRL turns the rewards into group advantages and logs them as `rewards/r2m/*`.
3. TRL's policy update. Its loss forward runs the policy backbone over every prompt + completion
   and keeps only the log-probabilities; a forward hook keeps the backbone's last hidden state
   too (detached): these are the fresh hidden states of step 4, at no extra compute.
4. After the optimizer step, one `/v1/update` with a GREBT group per prompt (winner and loser
   picked by the step-2 scores), so the run's version advances by one per optimizer step.

**Which forward supplies the hidden states.** Step 4: the loss forward TRL already runs. Step 2:
one extra no-grad forward of the policy backbone (no LM head) over the very token ids TRL
generated, padded and autocast as TRL's loss forward (so before the first optimizer step the two
phases' states are bit-identical; the TRL test checks it), because TRL's generation (transformers
or vLLM) returns tokens only and its old-log-prob forward runs only in some configurations. It
costs about a third of a training step's policy FLOPs (forward only, no LM head); on the 2-core
CPU with a 2-layer, 32-wide Llama and 16 samples of up to 35 tokens per step it took 0.23 s of a
3.6 s step (6%), generation being most of the rest. Memory: the states of one generation batch
(B×S×D_p, on the CPU) while they are sent, and the step's fresh states until its update.

Single process only: a multi-process run would send one update per process per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer
from trl.trainer.utils import pad

from r2m_client import Group, R2MClient, RunOptions, ScoreResponse
from r2m_client.hf import unpad_hidden_states

# The generation-batch position of each row, carried through TRL's shuffle and split so the
# loss forward's rows can be matched to the rollout that produced them.
INDEX_KEY = "r2m_index"


class R2MReward:
    """A TRL reward function: r2m's reward for each completion at the trainer's RL step.

    Given `hidden_states` (a callable answering the current batch's policy states, as
    `R2MGRPOTrainer` does), the reward is R2M's; without, it is ϕ(H_last) of the run (usable
    with any TRL trainer as a plain remote reward model). Remembers the last batch it scored,
    which the trainer needs for the update.
    """

    __name__ = "r2m"  # TRL logs the rewards as rewards/r2m/mean and rewards/r2m/std

    def __init__(self, client: R2MClient, run_id: str | None = None,
                 hidden_states: Callable[[], Sequence[torch.Tensor]] | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self.hidden_states = hidden_states
        self.last: Rollout | None = None

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                 trainer_state: Any = None, **_: Any) -> list[float]:
        if self.run_id is None:
            raise RuntimeError("R2MReward has no run: pass run_id, or use R2MGRPOTrainer")
        step = None if trainer_state is None else trainer_state.global_step
        rollout = Rollout([as_text(p) for p in prompts], [as_text(c) for c in completions])
        hidden = None if self.hidden_states is None else self.hidden_states()
        rollout.scored = self.client.score(self.run_id, rollout.prompts, rollout.completions,
                                           hidden, step=step)
        self.last = rollout
        return rollout.scored.rewards


@dataclass
class Rollout:
    """One generation batch as r2m saw it: texts in generation order, and their scores."""

    prompts: list[str]
    completions: list[str]
    scored: ScoreResponse | None = None
    # fresh hidden states [S_i, D_p] by generation position, from the loss forwards of a step
    fresh: dict[int, torch.Tensor] = field(default_factory=dict)

    def groups(self, k: int) -> list[Group]:
        """One GREBT group per prompt among the positions whose fresh states arrived (K
        consecutive positions share a prompt); a group needs two of them."""
        assert self.scored is not None
        members: dict[int, list[int]] = {}
        for index in sorted(self.fresh):
            members.setdefault(index // k, []).append(index)
        return [Group(self.prompts[ids[0]], [self.completions[i] for i in ids],
                      [self.fresh[i] for i in ids], [self.scored.rewards[i] for i in ids])
                for ids in members.values() if len(ids) >= 2]


class R2MGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` with r2m's R2M reward, trained online (see the module docstring).

    `r2m` is the client; `run_id` names the run (created at train start with T = the training's
    max steps and D_p = the policy's hidden size; the same id and settings again reuse it);
    `run_options` are `create_run`'s other settings. Other `reward_funcs` are added after r2m's.
    """

    def __init__(self, *args: Any, r2m: R2MClient, run_id: str | None = None,
                 run_options: RunOptions | None = None, reward_funcs: Any = None,
                 **kwargs: Any) -> None:
        self.r2m_reward = R2MReward(r2m, hidden_states=self._annotation_states)
        others = [] if reward_funcs is None else (
            list(reward_funcs) if isinstance(reward_funcs, list) else [reward_funcs])
        super().__init__(*args, reward_funcs=[self.r2m_reward, *others], **kwargs)
        if self.accelerator.num_processes > 1:
            raise ValueError("R2MGRPOTrainer runs in one process (one /v1/update per optimizer "
                             "step); gathering hidden states across processes is not supported")
        self._r2m_run_id = run_id
        self._r2m_options = run_options or {}
        self._generated: tuple[list[list[int]], list[list[int]]] | None = None
        self.r2m_rollout: Rollout | None = None
        self.add_callback(_UpdateEachStep(self))

    # ---- step 2: annotation ------------------------------------------------------------------

    def _generate(self, prompts: list[Any]) -> Any:
        """Keep the token ids TRL generated: the annotation forward reads exactly those."""
        result = super()._generate(prompts)
        self._generated = (result[0], result[1])
        return result

    def _annotation_states(self) -> list[torch.Tensor]:
        """The policy backbone's last hidden states of the batch just generated, padded as the
        loss forward pads it (prompts left, completions right), so both phases see one input."""
        assert self._generated is not None, "the reward was called before generation"
        prompt_ids, completion_ids = self._generated
        ids, mask = self._padded(prompt_ids, completion_ids)
        backbone = self._backbone()
        chunk = self.args.per_device_train_batch_size
        states: list[torch.Tensor] = []
        with torch.no_grad(), self.accelerator.autocast():  # as the loss forward runs
            for start in range(0, len(ids), chunk):
                rows = slice(start, start + chunk)
                out = backbone(input_ids=ids[rows], attention_mask=mask[rows], use_cache=False)
                states += [s.cpu() for s in unpad_hidden_states(out.last_hidden_state,
                                                                mask[rows])]
        return states

    def _padded(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        pad_id = self._tokenizer.pad_token_id
        halves = []
        for rows, side in ((prompt_ids, "left"), (completion_ids, "right")):
            tensors = [torch.tensor(row) for row in rows]
            halves.append((pad(tensors, pad_id, side, self.pad_to_multiple_of),
                           pad([torch.ones_like(t) for t in tensors], 0, side,
                               self.pad_to_multiple_of)))
        (p_ids, p_mask), (c_ids, c_mask) = halves
        device = self.accelerator.device
        return (torch.cat([p_ids, c_ids], 1).to(device),
                torch.cat([p_mask, c_mask], 1).to(device))

    def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        output[INDEX_KEY] = torch.arange(len(output["prompt_ids"]),
                                         device=output["prompt_ids"].device)
        if self.model.training:
            self.r2m_rollout = self.r2m_reward.last
        return output

    # ---- step 3: fresh hidden states from the loss forward ----------------------------------

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        with self._keeping_last_hidden_state() as kept:
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.model.training and kept:
            mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
            states = unpad_hidden_states(torch.cat(kept), mask)
            rows = inputs[INDEX_KEY].tolist()
            self.r2m_rollout.fresh.update(
                (row, s.cpu()) for row, s in zip(rows, states, strict=True))
        return loss

    @contextlib.contextmanager
    def _keeping_last_hidden_state(self) -> Iterator[list[torch.Tensor]]:
        kept: list[torch.Tensor] = []

        def keep(_: Any, __: Any, output: Any) -> None:
            kept.append(output.last_hidden_state.detach())

        handle = self._backbone().register_forward_hook(keep)
        try:
            yield kept
        finally:
            handle.remove()

    def _backbone(self) -> torch.nn.Module:
        """The module whose output is the last hidden state (`LlamaModel` in a
        `LlamaForCausalLM`), under any PEFT or accelerate wrapper; TRL's fused forward calls it."""
        model = self.accelerator.unwrap_model(self.model)
        model = model.get_base_model() if hasattr(model, "get_base_model") else model
        return model.base_model

    # ---- step 4: the run ---------------------------------------------------------------------

    def _start_run(self, total_steps: int) -> None:
        hidden_size = self.accelerator.unwrap_model(self.model).config.get_text_config()
        run = self.r2m_reward.client.create_run(hidden_size.hidden_size, total_steps,
                                                run_id=self._r2m_run_id, **self._r2m_options)
        self.r2m_reward.run_id = run.run_id

    def _update(self, step: int) -> None:
        """One `/v1/update` for optimizer step `step`; the key makes a retry apply once."""
        rollout = self.r2m_rollout
        groups = rollout.groups(self.num_generations)
        rollout.fresh.clear()
        if not groups:
            return
        run_id = self.r2m_reward.run_id
        assert run_id is not None
        self.r2m_reward.client.update(run_id, groups=groups, step=step,
                                      idempotency_key=f"trl-{run_id}-step-{step}")


class _UpdateEachStep(TrainerCallback):
    """Creates the run when training starts and updates it after each optimizer step."""

    def __init__(self, trainer: R2MGRPOTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.trainer._start_run(state.max_steps)

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.trainer._update(state.global_step - 1)  # global_step already counts this step


def as_text(value: Any) -> str:
    """A TRL prompt or completion as text: a string as is; a conversation (a list of
    `{"role", "content"}` messages) as its messages' contents, one paragraph each."""
    if isinstance(value, str):
        return value
    return "\n\n".join(str(message["content"]) for message in value)
