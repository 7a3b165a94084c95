"""Lenient parsing of LLM outputs. Small models often drop closing tags or numbering; where the meaning is
clear we still take the content, otherwise the output is counted as malformed (never an exception)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

PLACEHOLDER = re.compile(r"core reasoning path here|feature description of product|step\s*1\s*->\s*step\s*2",
                         flags=re.I)
ARROW = re.compile(r"\s*(?:->|→|=>|⟶|—>|-->|>>)\s*")


@dataclass
class GVMResponse:
    """One parsed Figure-9 output; `error` names why it is unusable (None when usable)."""

    path_steps: list[str] = field(default_factory=list)
    reason: str = ""
    recommendations: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def path_text(self) -> str:
        return " -> ".join(self.path_steps)


def _section(text: str, name: str, following: Sequence[str]) -> str | None:
    """Text after <name> up to </name>, or (missing closing tag) up to the next known opening tag or the end."""
    m = re.search(rf"<\s*{name}\s*>", text, flags=re.I)
    if not m:
        return None
    rest = text[m.end():]
    ends = [re.search(rf"<\s*/\s*{name}\s*>", rest, flags=re.I)]
    ends += [re.search(rf"<\s*{f}\s*>", rest, flags=re.I) for f in following]
    cut = min((e.start() for e in ends if e), default=len(rest))
    return rest[:cut].strip()


def clean_step(step: str) -> str:
    step = re.sub(r"^\s*(?:step\s*\d+\s*[:.)-]?|\d+\s*[.)]|[-*•]+)\s*", "", step, flags=re.I)
    step = step.strip().strip("[]*\"'`").strip()
    return re.sub(r"\s+", " ", step).rstrip(".")


def split_path(text: str) -> list[str]:
    """'A -> B -> C' (any arrow style) into cleaned, non-empty steps."""
    first = next((ln for ln in text.splitlines() if ARROW.search(ln)), text)
    return [s for s in (clean_step(p) for p in ARROW.split(first)) if s]


def parse_recommendations(block: str) -> list[str]:
    """<item>..</item> entries (closing tag optional); else numbered or bulleted lines."""
    items = [clean_step(x) for x in re.split(r"<\s*item\s*>", block, flags=re.I)[1:]]
    items = [re.sub(r"<\s*/\s*item\s*>.*", "", x, flags=re.I | re.S).strip() for x in items]
    if not items and re.fullmatch(r"\s*\d+(?:\s*,\s*\d+)*\s*", block):  # candidate numbers: "3, 1, 7"
        return [x.strip() for x in block.split(",")]
    if not items:
        items = [clean_step(ln) for ln in block.splitlines() if re.match(r"\s*(?:\d+\s*[.)]|[-*•])\s*\S", ln)]
    return [x for x in items if len(x) >= 3 and "feature description of product" not in x.lower()]


def parse_gvm_output(text: str, *, min_steps: int = 2) -> GVMResponse:
    """Parse `<cot_path>`, `<reason>`, `<recommendations>`; sets `error` instead of raising."""
    out = GVMResponse()
    if not isinstance(text, str) or not text.strip():
        out.error = "empty"
        return out
    path = _section(text, "cot_path", ["reason", "recommendations"])
    if path is None:  # no tag: accept the first arrow line before any other section
        head = re.split(r"<\s*(?:reason|recommendations)\s*>", text, flags=re.I)[0]
        path = next((ln for ln in head.splitlines() if ARROW.search(ln)), None)
    if path is None:
        out.error = "no_cot_path"
        return out
    if PLACEHOLDER.search(path):  # the prompt's own format text copied back is not a reasoning path
        out.error = "placeholder_echo"
        return out
    out.path_steps = [p for p in split_path(path) if not re.fullmatch(r"(?:step\s*\d*|\.\.\.|…)", p, flags=re.I)]
    if len(out.path_steps) < min_steps:
        out.error = "path_too_short"
        return out
    out.reason = _section(text, "reason", ["recommendations"]) or ""
    recs = _section(text, "recommendations", [])
    if recs is None:  # items listed without the wrapper tag
        recs = text if re.search(r"<\s*item\s*>", text, flags=re.I) else ""
    out.recommendations = parse_recommendations(recs)
    if not out.recommendations:
        out.error = "no_recommendations"
    return out


def parse_best_path(text: str, *, min_steps: int = 2, max_steps: int = 8) -> list[str] | None:
    """The 'Best Path' line of a Figure-10 answer, or None when absent or not a usable step list."""
    m = re.search(r"best\s+path[^:\n]*:\s*(.+)", text, flags=re.I)
    if not m:
        return None
    line = m.group(1).strip()
    if not ARROW.search(line):  # path may start on the next line
        nxt = text[m.end():].strip().splitlines()
        line = nxt[0] if nxt and ARROW.search(nxt[0]) else line
    steps = [s for s in split_path(line) if len(s.split()) <= 12]
    if not (min_steps <= len(steps) <= max_steps) or "step1" in "".join(steps).lower().replace(" ", ""):
        return None
    return steps


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", s.lower()).strip()


def split_chain(text: str, steps: Sequence[str]) -> list[str] | None:
    """Split a template-shaped chain into its K step texts by the '**step name:**' headers (bold optional,
    case and punctuation ignored). Returns None when any step is missing or has no word in it (e.g. just
    "1."): the chain is rejected."""
    norm_steps = [_norm(s) for s in steps]
    header = re.compile(r"^\s*(?:[-*#>\d.)\s]*)\**\s*([^:*\n]{2,120}?)\s*\**\s*:\s*\**\s*(.*)$")
    found: dict[int, list[str]] = {}
    current: int | None = None
    for line in text.splitlines():
        m = header.match(line)
        idx = None
        if m:
            name = _norm(m.group(1))
            idx = next((k for k, s in enumerate(norm_steps) if name == s and k not in found), None)
        if idx is not None:
            current = idx
            found[idx] = [m.group(2).strip()]  # type: ignore[union-attr]
        elif current is not None:
            found[current].append(line.strip())
    parts = []
    for k in range(len(steps)):
        body = " ".join(x for x in found.get(k, []) if x).strip().strip("*").strip()
        body = _strip_echo(body, steps[k])
        if not re.search(r"[^\W\d_]{3,}", body):  # empty, or only numbering/punctuation ("1.", "-"): missing
            return None
        parts.append(body)
    return parts


def _strip_echo(body: str, step: str) -> str:
    """A small model often starts a step by copying its name ("Analyze the pattern: ..."): that copy says
    nothing about the user, so it is dropped; a step that is only the copy is then empty (rejected)."""
    words = re.findall(r"[a-z0-9]+", step.lower())
    if not words:
        return body
    m = re.match(r"\W*" + r"\W+".join(map(re.escape, words)) + r"\W*(?::|$)", body, flags=re.I)
    return body[m.end():].strip() if m else body


def numbered_lines(text: str, k: int) -> list[str] | None:
    """The K step texts of a numbered answer ("1. ..", "2. .."), or None when any step is missing or empty."""
    found: dict[int, str] = {}
    for line in text.splitlines():
        m = re.match(r"\s*(\d+)[.)]\s*(.*)$", line)
        if m and 1 <= int(m.group(1)) <= k and int(m.group(1)) not in found:
            found[int(m.group(1))] = m.group(2).strip()
    parts = [found.get(j, "") for j in range(1, k + 1)]
    return parts if all(re.search(r"[^\W\d_]{3,}", p) for p in parts) else None
