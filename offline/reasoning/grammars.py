"""EBNF grammars (xgrammar's dialect, close to llama.cpp's GBNF) for the answers the reasoning stages parse.

A grammar makes the format a guarantee rather than a hope: a 135M model left free almost never writes the
`<cot_path>` / `<reason>` / `<recommendations>` answer or a template-shaped chain. Lengths are bounded in
characters so every answer ends; the content of each section is still the model's."""

from __future__ import annotations

import json
from collections.abc import Sequence

WORD = r"[A-Za-z][A-Za-z'&/-]{0,15}"
TEXT_CHAR = r"[^<>\n*]"


def _lit(s: str) -> str:
    return json.dumps(s)


def _path_rule(min_steps: int, max_steps: int, words: int = 8) -> str:
    return (f'path ::= step (" -> " step){{{min_steps - 1},{max_steps - 1}}}\n'
            f'step ::= word (" " word){{0,{words - 1}}}\n'
            f"word ::= {WORD}\n")


def gvm_answer(*, fixed_path: Sequence[str] | None = None, n_candidates: int | None = None, n_recs: int = 20,
               min_recs: int = 10, step_words: int = 8,
               reason_chars: int = 240, rec_chars: int = 60, min_steps: int = 2, max_steps: int = 5) -> str:
    """The Figure-9 answer. With `n_candidates` each recommendation is a candidate's number (1..n, mapped to
    its catalogue id); without, a short free-text item description (mapped by embedding). With `fixed_path`
    the `<cot_path>` is that template (how a manual template is validated on the same footing)."""
    path = _lit(" -> ".join(fixed_path)) if fixed_path else "path"
    if n_candidates:
        nums = " | ".join(_lit(str(k)) for k in range(n_candidates, 0, -1))  # longest first
        recs = f'ref (", " ref){{{min(min_recs, n_recs) - 1},{n_recs - 1}}}'
        rec_rules = f"ref ::= {nums}\n"
    else:
        recs = f'"<item>" desc "</item>" ("\\n<item>" desc "</item>"){{{min(min_recs, n_recs) // 2},{n_recs - 1}}}'
        rec_rules = f"desc ::= {WORD} ({TEXT_CHAR}){{2,{rec_chars}}}\n"  # ~4 tokens per 15 characters
    g = (f'root ::= "<cot_path>\\n" {path} "\\n</cot_path>\\n<reason>\\n" reason "\\n</reason>\\n'
         f'<recommendations>\\n" {recs} "\\n</recommendations>"\n'
         f"reason ::= {WORD} ({TEXT_CHAR}){{8,{reason_chars}}}\n" + rec_rules)
    return g if fixed_path else g + _path_rule(min_steps, max_steps, step_words)


# What a step can be about: the facts a grounded prompt shows, named as the paper's templates name their steps.
# The mined template's steps are a verb and one of these (or a phrase that recurs in the best cluster's paths):
# a small model then abstracts with real step names rather than with loose words ("Analyze analyse analyse").
STEP_FACETS = (
    "purchase history", "recent purchases", "stable vs recent interests", "user profile", "brand preferences",
    "category transitions", "interest patterns", "preference trends", "shared item attributes",
    "bought-together candidates", "complementary products", "repeat purchases", "product types",
    "high-confidence features", "item tags",
)
LINK_WORDS = "and vs of the to from with by via for on in".split()
STEP_VERBS = ("Analyze", "Identify", "Distinguish", "Extract", "Match", "Expand via", "Predict", "Summarize",
              "Rank", "Review", "Compare", "Find")


def best_path_step(facets: Sequence[str], *, can_end: bool, must_end: bool, verb: bool = True) -> str:
    """One step of the mined 'Best Path': a verb (unless the caller wrote it) and one of `facets`, then either
    the next arrow or, where the path may end, " -> Item Recommendation" (the paper's templates' last step). The
    caller writes the path step by step and drops the facets already used, so no two steps are about the same
    thing."""
    if not facets:
        raise ValueError("best_path_step: no facet left to write a step about")
    ends = ([] if must_end else ['" -> "']) + (['" -> Item Recommendation\\n"'] if can_end or must_end else [])
    alts = " | ".join(_lit(f) for f in sorted(dict.fromkeys(facets), key=len, reverse=True))
    head = 'verb " " facet' if verb else "facet"
    return (f'root ::= {head} ({" | ".join(ends)})\n'
            f"verb ::= {' | '.join(_lit(v) for v in STEP_VERBS)}\n"
            f"facet ::= {alts}\n")


def chain(steps: Sequence[str], *, step_chars: int = 200, min_chars: int = 12) -> str:
    """A template-shaped chain: '**step:** text' per line, every step present, in order."""
    body = " ".join(f'{_lit(("" if k == 0 else chr(10)) + f"**{s}:** ")} text' for k, s in enumerate(steps))
    return f"root ::= {body}\ntext ::= {WORD} ({TEXT_CHAR}){{{min_chars},{step_chars}}}\n"


def numbered_steps(k: int, *, step_chars: int = 80, min_chars: int = 12, names: Sequence[str] | None = None) -> str:
    """K numbered lines "1. text" .. "K. text": one line per template step, in order; `parsing.numbered_lines` +
    `prompts.format_chain` rebuild the '**step:** text' chain. With `names` each line opens with its step's name
    ("1. User Profile Summary: text"): a small model left to itself writes the name as the step's whole text."""
    if names is not None and len(names) != k:
        raise ValueError(f"names: {len(names)} step names for k={k}")
    heads = [f"{j}. " + (f"{names[j - 1]}: " if names else "") for j in range(1, k + 1)]
    body = " ".join(f'{_lit(("" if j == 1 else chr(10)) + h)} text' for j, h in enumerate(heads, 1))
    return f"root ::= {body}\ntext ::= {WORD} ({TEXT_CHAR}){{{min_chars},{step_chars}}}\n"
