"""Lenient parsing: good outputs, the malformed shapes a 135M model produces, and chain splitting."""

from __future__ import annotations

from offline.reasoning.parsing import parse_best_path, parse_gvm_output, split_chain, split_path

GOOD = """<cot_path>
Analyze purchase history -> Find brand loyalty -> Item recommendation
</cot_path>
<reason>The user buys OPI nail products repeatedly.</reason>
<recommendations>
<item>OPI red nail lacquer, long lasting</item>
<item>Quick-dry top coat</item>
</recommendations>"""


def test_good_output_parses_all_sections() -> None:
    r = parse_gvm_output(GOOD)
    assert r.error is None
    assert r.path_steps == ["Analyze purchase history", "Find brand loyalty", "Item recommendation"]
    assert r.reason.startswith("The user buys")
    assert r.recommendations == ["OPI red nail lacquer, long lasting", "Quick-dry top coat"]


def test_missing_closing_tags_and_unicode_arrows_are_accepted() -> None:
    text = "<cot_path> Step 1: Review items → Step 2: Match style\n<reason> blah\n<recommendations>\n<item>Lip balm\n<item>Serum"
    r = parse_gvm_output(text)
    assert r.error is None
    assert r.path_steps == ["Review items", "Match style"]
    assert r.recommendations == ["Lip balm", "Serum"]


def test_untagged_arrow_line_and_numbered_recommendations() -> None:
    text = "Path: history -> interests -> recommend\n<recommendations>\n1. Hair dryer\n2) Shampoo\n</recommendations>"
    r = parse_gvm_output(text)
    assert r.error is None and r.path_steps[-1] == "recommend"
    assert r.recommendations == ["Hair dryer", "Shampoo"]


def test_malformed_outputs_are_counted_not_raised() -> None:
    assert parse_gvm_output("").error == "empty"
    assert parse_gvm_output("I like nail polish.").error == "no_cot_path"
    assert parse_gvm_output("<cot_path>only one step</cot_path>").error == "path_too_short"
    assert parse_gvm_output("<cot_path>a -> b</cot_path><reason>x</reason>").error == "no_recommendations"
    # the prompt's own placeholder echoed back is not a recommendation
    echoed = "<cot_path>a -> b</cot_path><recommendations><item>Detailed feature description of product 1</item>"
    assert parse_gvm_output(echoed).error == "no_recommendations"
    echoed_path = "<cot_path>[Summarize the core reasoning path here: Step 1 -> Step 2 -> Item recommendation]"
    assert parse_gvm_output(echoed_path + "<item>x y z</item>").error == "placeholder_echo"
    # bare 'Step' / '...' fragments are not steps
    assert parse_gvm_output("<cot_path>Look at brands -> Step -> ...</cot_path><item>lip balm</item>").error == "path_too_short"


def test_best_path_parsing_and_rejection() -> None:
    answer = "### 3. Optimized Paths\n- **Best Path (each step <= 8 words):** Review buys -> Split stable/recent -> Item Recommendation\n"
    assert parse_best_path(answer) == ["Review buys", "Split stable/recent", "Item Recommendation"]
    assert parse_best_path("Best Path: [Step1 -> Step2 -> ... -> Stepk]") is None  # the placeholder
    assert parse_best_path("no path here") is None
    assert parse_best_path("Best Path: just one") is None


def test_split_path_handles_arrow_styles() -> None:
    assert split_path("a => b --> c ⟶ d") == ["a", "b", "c", "d"]


def test_split_chain_accepts_loose_headers_and_rejects_missing_steps() -> None:
    steps = ["User Profile Summary", "User Interest Extraction", "Item Recommendation"]
    text = ("**Overall Analysis:** ignored\n**User Profile Summary:** likes nails\ncontinues here\n"
            "user interest extraction: polish colours\n3. **Item Recommendation**: a top coat")
    assert split_chain(text, steps) == ["likes nails continues here", "polish colours", "a top coat"]
    assert split_chain("**User Profile Summary:** x\n**Item Recommendation:** y", steps) is None
    assert split_chain("**User Profile Summary:** x\n**User Interest Extraction:**\n**Item Recommendation:** y",
                       steps) is None  # an empty step is a missing step
    assert split_chain("**User Profile Summary:** 1.\n**User Interest Extraction:** 2.\n**Item Recommendation:** 3.",
                       steps) is None  # numbering only: the small teacher wrote nothing


def test_a_step_that_only_copies_its_name_is_rejected() -> None:
    from offline.reasoning.parsing import split_chain

    steps = ["Analyze repeat of the pattern", "Item Recommendation"]
    echo = "**Analyze repeat of the pattern:** Analyze repeat of the pattern:\n**Item Recommendation:** Eau de Parfum"
    assert split_chain(echo, steps) is None
    ok = "**Analyze repeat of the pattern:** buys OPI often\n**Item Recommendation:** Item Recommendation: a top coat"
    assert split_chain(ok, steps) == ["buys OPI often", "a top coat"]
