"""The batched decoder on the real SmolLM2-135M: the shared-prefix KV cache gives the same greedy tokens as
transformers' own generate(), grammars make the answers well formed, the per-line cap and the repetition
penalty act. Generations are a few tokens long so the tests stay fast on 2 cores."""

from __future__ import annotations

import pytest

from offline.reasoning import grammars
from offline.reasoning.config import LocalLLMConfig, SamplingParams
from offline.reasoning.fastgen import common_prefix
from offline.reasoning.gvm import degenerate
from offline.reasoning.local_backend import LocalLLM
from offline.reasoning.parsing import numbered_lines, parse_gvm_output

SYSTEM = {"role": "system", "content": "You are a helpful beauty shop assistant. Answer briefly."}
CHATS = [[SYSTEM, {"role": "user", "content": q}] for q in
         ("Name one nail polish colour.", "Suggest a shampoo for dry hair, please.", "What is a BB cream?")]


def test_common_prefix_leaves_every_row_a_token() -> None:
    assert common_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix([[7, 8], [7, 8]]) == 1  # the last token must be run to get the next-token logits
    assert common_prefix([]) == 0


def test_prefix_cache_decoder_matches_transformers_generate(local_llm) -> None:
    """Greedy tokens from the decoder (one prefix pass reused by a padded batch) equal generate() run on each
    prompt alone: the reused cache, the padding between prefix and suffix and the positions are right."""
    params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=6)
    # float32: exact agreement with transformers (the bfloat16 default's agreement is tested in test_llama_runtime)
    fast_llm = LocalLLM(LocalLLMConfig(batch_size=4, dtype="float32"), model=local_llm._model,
                        tokenizer=local_llm._tok)
    fast = fast_llm.generate(CHATS, params)
    ref = LocalLLM(LocalLLMConfig(engine="hf", batch_size=1), model=local_llm._model, tokenizer=local_llm._tok)
    assert fast == [ref.generate([c], params)[0] for c in CHATS]
    stats = fast_llm.decoder().stats
    assert stats.prefix_tokens_reused > 0 and stats.generated_tokens > 0 and stats.tokens_per_second > 0


def test_grammar_makes_a_grounded_answer_well_formed(local_llm) -> None:
    g = grammars.gvm_answer(n_candidates=5, n_recs=3, min_recs=2, reason_chars=20, max_steps=2)
    chat = [SYSTEM, {"role": "user", "content": "History: OPI red nail polish. Candidates: 1. top coat "
                     "2. remover 3. lip balm 4. BB cream 5. shampoo. Recommend."}]
    params = SamplingParams(temperature=0.7, max_tokens=120, seed=1, grammar=g, line_max_tokens=12)
    out = local_llm.generate([chat, chat], params)
    for text in out:
        parsed = parse_gvm_output(text)
        assert parsed.error is None, text
        assert 2 <= len(parsed.path_steps) and all(1 <= int(r) <= 5 for r in parsed.recommendations)


def test_line_cap_ends_each_step_and_numbered_lines_parse(local_llm) -> None:
    chat = [SYSTEM, {"role": "user", "content": "Explain in two numbered lines why someone buys nail polish."}]
    params = SamplingParams(temperature=0.0, max_tokens=60, grammar=grammars.numbered_steps(2, step_chars=200),
                            line_max_tokens=6)
    text = local_llm.generate([chat], params)[0]
    lines = numbered_lines(text, 2)
    assert lines is not None, text
    tok = local_llm._tok
    for line in text.splitlines():  # "1. " costs at most 3 tokens; the body is cut at the cap
        assert len(tok(line, add_special_tokens=False)["input_ids"]) <= 6 + 3


def test_named_steps_open_each_line_with_its_step_and_the_chain_keeps_only_the_text(local_llm) -> None:
    """The teacher's grammar writes each step's name itself, so the model's own text follows it; the chain parsed
    back holds the text without the name (a step that only repeats its name would be rejected)."""
    from offline.reasoning.parsing import split_chain
    from offline.reasoning.prompts import format_chain

    steps = ["User Profile Summary", "Item Recommendation"]
    chat = [SYSTEM, {"role": "user", "content": "Summarise a nail-polish buyer, then recommend one product."}]
    params = SamplingParams(temperature=0.0, max_tokens=60, line_max_tokens=12,
                            grammar=grammars.numbered_steps(2, step_chars=80, names=steps))
    text = local_llm.generate([chat], params)[0]
    assert [line.split(": ", 1)[0] for line in text.splitlines()] == ["1. User Profile Summary", "2. Item Recommendation"]
    parts = split_chain(format_chain(steps, numbered_lines(text, 2)), steps)
    assert parts is not None and not any(p.lower().startswith(s.lower()) for p, s in zip(parts, steps, strict=True))
    with pytest.raises(ValueError, match="names"):
        grammars.numbered_steps(3, names=steps)


def test_hf_engine_rejects_a_grammar(local_llm) -> None:
    ref = LocalLLM(LocalLLMConfig(engine="hf"), model=local_llm._model, tokenizer=local_llm._tok)
    with pytest.raises(ValueError, match="grammar"):
        grammar = grammars.best_path_step(["item tags"], can_end=True, must_end=True)
        ref.generate(CHATS[:1], SamplingParams(max_tokens=2, grammar=grammar))


def test_repetition_check() -> None:
    assert degenerate("ire ire ire ire ire")
    assert degenerate("expand the previous step to expand the previous step to expand the previous step")
    assert not degenerate("Recent nail purchases -> Match brand and finish -> Recommend a top coat")


def test_nucleus_sampling_draws_only_from_the_head_in_proportion() -> None:
    """Probabilities 0.5 / 0.3 / 0.15 / 0.05 and one masked (-inf) token: top_p 0.7 keeps the first two,
    renormalised to 0.625 / 0.375; top_p 1 draws all four in proportion; temperature 0 is the argmax; the
    masked token never comes up."""
    import numpy as np
    import torch

    from offline.reasoning.fastgen import sample

    p = np.array([0.5, 0.3, 0.15, 0.05])
    lg = torch.tensor(np.tile(np.append(np.log(p), -np.inf), (20000, 1)), dtype=torch.float32)
    rng = np.random.default_rng(0)
    head = np.bincount(sample(lg, 1.0, 0.7, rng), minlength=5) / len(lg)
    np.testing.assert_allclose(head, [0.625, 0.375, 0, 0, 0], atol=0.015)
    full = np.bincount(sample(lg, 1.0, 1.0, rng), minlength=5) / len(lg)
    np.testing.assert_allclose(full, [*p, 0], atol=0.015)
    assert full[4] == 0 and head[2:].sum() == 0
    assert (sample(lg, 0.0, 0.7, rng) == 0).all()
