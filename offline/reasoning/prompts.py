"""Prompts from the paper's appendix F (Figures 9, 10, 11), R2END's oracle prompt, and the manual templates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from offline.reasoning.llm import Chat

# Appendix F: manual templates (and the paper's GVM-discovered Beauty pattern, for reference runs).
MANUAL_TEMPLATES: dict[str, list[str]] = {
    "two_step": ["User Interest Mining", "Item Tag Prediction & Recommendation"],
    "three_step": ["User Profile Summary", "User Interest Extraction", "Item Recommendation"],
    "five_step": ["Behavioral Data Analysis", "Interest Pattern Recognition", "Preference Trend Analysis",
                  "Predictive Feature Generation", "Targeted Item Recommendation"],
    "beauty_paper": ["Analyze sequential purchase history", "Distinguish stable vs. recent interests",
                     "Expand via shared item attributes", "Predict high-confidence features",
                     "Item Recommendation"],
}

GENERATE_PROMPT = """You are an expert in recommendation algorithms. Based on the user's historical behavior data, \
please infer a reasonable analysis and recommendation path, and predict {n_recs} different product features that \
the user may be interested in the future.

Requirements:
(1) First output <cot_path>, with a reasoning chain of at least two steps, each step <= 8 words, connected with "->".
(2) <reason> must be placed after <cot_path>, and the content must strictly follow each step in <cot_path> to \
expand the reasoning one by one.
(3) Finally output {n_recs} recommended product feature descriptions.

Output format requirements:
<cot_path>
[Summarize the core reasoning path here: Step 1 -> Step 2 -> ... -> Item recommendation]
</cot_path>
<reason>
[Explain the reasoning logic step by step according to the steps in cot_path]
</reason>
<recommendations>
<item>Detailed feature description of product 1, including category, brand, function, characteristics, etc.</item>
...
<item>Detailed feature description of product {n_recs}, including category, brand, function, characteristics, etc.</item>
</recommendations>

User's purchase history in chronological order:
{history}"""

MINE_PROMPT = """You are an expert in recommendation system reasoning patterns. Analyze the following CoT cluster \
and propose better reasoning paths.

Cluster ID: {cluster_id}
- Performance: Rank {rank} in {n_clusters} clusters | {recall:.3f} Recall@{k}
- Representative CoT Paths:
{paths}

Analysis & Output:
### 1. Pattern Summary
- Core Logic: [One sentence describing the main reasoning approach]
- Key Steps: [The most important characteristics of this pattern]
### 2. Performance Assessment
- Why it works: [What makes this pattern achieve its current hit rate]
- Limitations: [Main weaknesses preventing higher performance]
### 3. Optimized Paths
- Best Path (each step <= 8 words): [Step1 -> Step2 -> ... -> Stepk -> Item Recommendation]
- Improvement Logic: [How these address the identified limitations and why they should perform better]

Requirements: Keep the CoT path clear and not overly complex"""

DISTILL_INSTRUCTION = """You are an expert recommendation system. Your task is to analyze user purchase patterns \
and predict their next likely purchase based on their sequential purchase history.

Reasoning Pattern (High-level Steps): {pattern}

Required Output Format: for each step in the Reasoning Pattern write "**<step name>:** <analysis>" on its own \
line, in order."""

DISTILL_INPUT = """Analyze the following user purchase history and provide a structured rationale following the \
exact format:

Purchase History in Chronological Order:
{history}"""

ORACLE_INPUT = DISTILL_INPUT + """

The user's actual next purchase (explain the reasoning that leads to it, without naming it before the last step):
{target}"""


def render_history(texts: Sequence[str], *, max_items: int = 10) -> str:
    """Most recent `max_items` items, oldest first, one per line (the paper's 'Item n: title' form)."""
    recent = list(texts)[-max_items:]
    return "\n".join(f"- Item {i}: {t}" for i, t in enumerate(recent, 1))


def generate_chat(history_texts: Sequence[str], *, max_items: int = 10, n_recs: int = 20) -> Chat:
    """Figure 9 prompt for one user."""
    return [{"role": "user", "content": GENERATE_PROMPT.format(
        n_recs=n_recs, history=render_history(history_texts, max_items=max_items))}]


def mine_chat(paths: Sequence[str], *, cluster_id: int, rank: int, n_clusters: int, recall: float,
              k: int = 20) -> Chat:
    """Figure 10 prompt over the exemplar paths of the winning cluster."""
    lines = "\n".join(f"  ({i}) <cot_path> {p} </cot_path>" for i, p in enumerate(paths, 1))
    return [{"role": "user", "content": MINE_PROMPT.format(cluster_id=cluster_id, rank=rank, n_clusters=n_clusters,
                                                           recall=recall, k=k, paths=lines)}]


def distill_chat(steps: Sequence[str], history_texts: Sequence[str], *, max_items: int = 10,
                 target_text: str | None = None) -> Chat:
    """Figure 11 instruction + input (optionally R2END's oracle target) for the teacher."""
    history = render_history(history_texts, max_items=max_items)
    body = (ORACLE_INPUT.format(history=history, target=target_text) if target_text is not None
            else DISTILL_INPUT.format(history=history))
    return [{"role": "system", "content": DISTILL_INSTRUCTION.format(pattern=" -> ".join(steps))},
            {"role": "user", "content": body}]


def format_chain(steps: Sequence[str], texts: Sequence[str]) -> str:
    """The student's target text: '**step:** text' per line, in template order."""
    return "\n".join(f"**{s}:** {t.strip()}" for s, t in zip(steps, texts, strict=True))


def student_history_text(history_texts: Sequence[str], *, max_items: int = 10) -> str:
    """Encoder-student input: newest item first, so the tokenizer's truncation drops the oldest items."""
    recent = list(history_texts)[-max_items:][::-1]
    return "Recent purchases, newest first: " + " | ".join(recent)


# ---- grounded prompts (facts from training interactions only; see grounding.py) -------------------------
VARIANTS = ("plain", "grounded", "hindsight")

_SECTIONS = ("Answer with a reasoning path of 2 to 4 short steps joined by ->, then a one-sentence reason that "
             "names concrete product types, brands and categories from the data, then the recommendations.")

GVM_SYSTEM = {
    "plain": "You are an expert in recommendation. Read the shopper's purchase history and predict what they "
             "buy next. " + _SECTIONS + " Recommend up to {n_recs} products, each a short description with "
             "type, brand and category.",
    "grounded": "You are an expert in recommendation. Read the shopper's purchase history, profile and the "
                "numbered candidates (items other shoppers bought together with these items) and predict what "
                "they buy next. " + _SECTIONS + " Recommend up to {n_recs} candidates by number, most likely "
                "first, each number once.",
    "hindsight": "You are an expert in recommendation. Read the shopper's purchase history, profile, the item "
                 "they bought right after it, and the numbered candidates (items other shoppers bought together "
                 "with these items). Explain why they bought that item and predict what they buy after it. "
                 + _SECTIONS + " Recommend up to {n_recs} candidates by number, most likely first, each number "
                 "once.",
}

TEACHER_SYSTEM = """You are an expert recommendation system. Given a shopper's purchase history{next_clause}, \
write the reasoning that leads to their next purchase in {k} numbered lines, one per step:
{numbered}
Name concrete product types, brands and categories from the data; never repeat a sentence."""

HISTORY_HEADER = "Purchase history (oldest first; title | brand | category):\n"


def grounded_user_message(g: Any, history: Sequence[int], *, candidates: Sequence[int] | None = None,
                          next_item: int | None = None) -> str:
    """History, profile, optionally the known next item (hindsight) and the numbered candidates."""
    parts = [HISTORY_HEADER + g.render_history(history)]  # the header ends the shared (cached) prefix
    profile = g.render_profile(history)
    if profile:
        parts.append("Profile: " + profile)
    if next_item is not None:
        parts.append("Bought next: " + g.item_line(int(next_item)))
    if candidates:
        parts.append("Candidates:\n" + g.render_candidates(candidates))
    return "\n\n".join(parts)


def gvm_variant_chat(variant: str, g: Any, history: Sequence[int], *, candidates: Sequence[int] | None = None,
                     next_item: int | None = None, n_recs: int = 20) -> Chat:
    """Figure-9 prompt in one of VARIANTS: plain (history only), grounded (+ profile and candidates),
    hindsight (grounded + the item bought right after the history, a training interaction)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    if variant == "plain":
        body = HISTORY_HEADER + g.render_history(history)
    else:
        if not candidates:
            raise ValueError(f"variant {variant!r} needs candidates")
        if variant == "hindsight" and next_item is None:
            raise ValueError("variant 'hindsight' needs next_item (a training interaction)")
        body = grounded_user_message(g, history, candidates=candidates,
                                     next_item=next_item if variant == "hindsight" else None)
    return [{"role": "system", "content": GVM_SYSTEM[variant].format(n_recs=n_recs)},
            {"role": "user", "content": body}]


def teacher_chat(steps: Sequence[str], g: Any, history: Sequence[int], *, next_item: int | None = None) -> Chat:
    """Distillation teacher prompt, grounded; with `next_item` (training rows only) it is the hindsight
    (R2END oracle-guided) teacher that writes the chain leading to the item actually bought."""
    clause = " and the item they actually bought next" if next_item is not None else ""
    numbered = "\n".join(f"{j}. {s}" for j, s in enumerate(steps, 1))
    return [{"role": "system", "content": TEACHER_SYSTEM.format(next_clause=clause, k=len(steps), numbered=numbered)},
            {"role": "user", "content": grounded_user_message(g, history, next_item=next_item)}]
