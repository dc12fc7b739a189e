"""Unit tests for hottask_sync.patterns: default skips, include/exclude globs, may_descend."""

from __future__ import annotations

import pytest

from hottask_sync.patterns import PatternError, Selector, is_partial_or_hidden, pattern_problem

EVERYTHING = Selector()


# --- default skips -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "relpath",
    [
        ".hidden",
        ".DS_Store",
        ".git/config",
        "a/.cache/b/c.pdf",
        "docs/.~lock.report.odt#",
        "report.pdf.part",
        "video.partial",
        "x.tmp",
        "x.temp",
        "setup.exe.crdownload",
        "photo.jpg.download",
        ".notes.txt.swp",
        "notes.txt.swp",
        "foo~",
        "sub/dir/foo.txt~",
        "~$doc.docx",
        "sub/~$budget.xlsx",
    ],
)
def test_default_skips(relpath: str) -> None:
    assert is_partial_or_hidden(relpath)
    assert not EVERYTHING.wants(relpath)
    # include cannot bring them back
    assert not Selector.of(["*", "**"], []).wants(relpath)


@pytest.mark.parametrize(
    "relpath",
    [
        "report.pdf",
        "a/b/c.txt",
        "part",
        "my.part.pdf",
        "tmp/notes.txt",
        "temp.txt",
        "down.load",
        "~file.txt",
        "doc$.docx",
        "a.b/c",
        "x~y.txt",
    ],
)
def test_ordinary_names_are_taken(relpath: str) -> None:
    assert not is_partial_or_hidden(relpath)
    assert EVERYTHING.wants(relpath)


# --- include / exclude ------------------------------------------------------------------------


def test_include_empty_means_everything() -> None:
    s = Selector.of([], [])
    for relpath in ("a.pdf", "b.txt", "deep/down/c.bin", "noext"):
        assert s.wants(relpath)


def test_pattern_without_slash_matches_a_name_at_any_depth() -> None:
    s = Selector.of(["*.pdf"], [])
    assert s.wants("a.pdf")
    assert s.wants("x/a.pdf")
    assert s.wants("x/y/z/a.pdf")
    assert not s.wants("a.txt")
    assert not s.wants("x/a.pdf.txt")
    assert not s.wants("a.PDF.bak")


def test_star_does_not_cross_folders_in_an_anchored_pattern() -> None:
    s = Selector.of(["scans/*.pdf"], [])
    assert s.wants("scans/a.pdf")
    assert not s.wants("scans/2024/a.pdf")
    assert not s.wants("other/scans/a.pdf")
    assert not s.wants("a.pdf")


def test_pattern_with_slash_is_anchored_at_the_folder_root() -> None:
    s = Selector.of([], ["build/out"])
    assert s.excluded("build/out")
    assert s.excluded("build/out/x.bin")
    assert not s.excluded("src/build/out/x.bin")
    assert s.wants("src/build/out/x.bin")
    assert not s.wants("build/out/x.bin")


def test_leading_slash_anchors_a_single_name() -> None:
    s = Selector.of([], ["/tmp"])
    assert not s.wants("tmp/a.txt")
    assert s.wants("sub/tmp/a.txt")
    unanchored = Selector.of([], ["tmp"])
    assert not unanchored.wants("tmp/a.txt")
    assert not unanchored.wants("sub/tmp/a.txt")


def test_double_star() -> None:
    s = Selector.of(["scans/**/*.pdf"], [])
    assert s.wants("scans/a.pdf")
    assert s.wants("scans/2024/a.pdf")
    assert s.wants("scans/2024/01/31/a.pdf")
    assert not s.wants("scans/2024/a.txt")
    assert not s.wants("other/scans/a.pdf")
    assert not s.wants("scansX/a.pdf")

    anywhere = Selector.of(["**/*.csv"], [])
    assert anywhere.wants("a.csv")
    assert anywhere.wants("x/y/a.csv")
    assert not anywhere.wants("a.csvx")

    below = Selector.of(["inbox/**"], [])
    assert below.wants("inbox/a")
    assert below.wants("inbox/x/y/z.bin")
    assert not below.wants("outbox/a")


def test_pattern_naming_a_folder_matches_everything_below_it() -> None:
    s = Selector.of([], ["archive"])
    assert s.excluded("archive")
    assert s.excluded("archive/a.pdf")
    assert s.excluded("archive/2023/b.pdf")
    assert s.excluded("x/archive/c.pdf")
    assert not s.excluded("archived.pdf")
    assert not s.excluded("x/archives/c.pdf")
    assert s.wants("x/archives/c.pdf")

    inc = Selector.of(["invoices"], [])
    assert inc.wants("invoices/2024/a.pdf")
    assert inc.wants("clients/acme/invoices/a.pdf")
    assert not inc.wants("receipts/a.pdf")


def test_exclude_beats_include() -> None:
    s = Selector.of(["*.pdf"], ["drafts", "*-draft.pdf"])
    assert s.wants("final.pdf")
    assert not s.wants("drafts/final.pdf")
    assert not s.wants("x-draft.pdf")
    assert not s.wants("notes.txt")


def test_several_includes_are_alternatives() -> None:
    s = Selector.of(["*.pdf", "*.docx"], [])
    assert s.wants("a.pdf")
    assert s.wants("b/c.docx")
    assert not s.wants("c.txt")


def test_question_mark_and_character_classes() -> None:
    s = Selector.of(["scan-?.png", "[ab]*.txt", "[!x]y.csv"], [])
    assert s.wants("scan-1.png")
    assert not s.wants("scan-12.png")
    assert s.wants("alpha.txt")
    assert s.wants("beta.txt")
    assert not s.wants("gamma.txt")
    assert s.wants("ay.csv")
    assert not s.wants("xy.csv")
    assert not Selector.of(["a?b"], []).wants("a/b")


def test_regex_metacharacters_are_literal() -> None:
    s = Selector.of(["report (1).pdf", "a+b.txt", "x$.csv", "^y{2}.txt"], [])
    assert s.wants("report (1).pdf")
    assert not s.wants("report 1.pdf")
    assert s.wants("a+b.txt")
    assert not s.wants("aab.txt")
    assert s.wants("x$.csv")
    assert s.wants("^y{2}.txt")
    assert not s.wants("yy.txt")


def test_backslash_escapes_a_glob_character() -> None:
    s = Selector.of(["\\[draft\\]*", "star\\*.txt"], [])
    assert s.wants("[draft] notes.txt")
    assert not s.wants("d notes.txt")
    assert s.wants("star*.txt")
    assert not s.wants("starry.txt")


def test_a_bracket_right_after_the_opening_one_is_a_member() -> None:
    s = Selector.of(["[]]x", "[!]]y"], [])
    assert s.wants("]x")
    assert not s.wants("ax")
    assert s.wants("ay")
    assert not s.wants("]y")


def test_leading_bang_and_hash_are_literal_not_negation_or_comment() -> None:
    s = Selector.of(["!important.pdf", "#1.txt"], [])
    assert s.wants("!important.pdf")
    assert s.wants("sub/#1.txt")
    assert not s.wants("important.pdf")
    assert not s.wants("other.pdf")
    ex = Selector.of([], ["*.pdf", "!keep.pdf"])
    assert not ex.wants("keep.pdf")  # no un-excluding: exclude is a plain list
    assert ex.wants("!keep.pdf.txt")


def test_trailing_slash_names_only_folders() -> None:
    s = Selector.of([], ["done/"])
    assert not s.wants("done/a.pdf")
    assert not s.wants("x/done/a.pdf")
    assert s.wants("done")  # a file called done
    assert not s.may_descend("done")


# --- unusable patterns (issue 9, item 7) -----------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("[]", "unclosed '['"),
        ("[!]", "unclosed '['"),
        ("a[b-a]c", "invalid character class '[b-a]': bad character range b-a"),
        ("[unclosed", "unclosed '['"),
        ("scans/[2024", "unclosed '['"),
        ("a\\", "escapes nothing"),
        ("/", "matches nothing"),
    ],
)
def test_unusable_pattern_is_refused_with_a_reason(pattern: str, reason: str) -> None:
    for include, exclude in (([pattern], []), (["*.pdf"], ["ok", pattern])):
        with pytest.raises(ValueError, match="invalid pattern") as info:
            Selector.of(include, exclude)
        assert isinstance(info.value, PatternError)
        assert info.value.pattern == pattern
        assert reason in info.value.reason
        assert str(info.value) == f"invalid pattern {pattern!r}: {info.value.reason}"
    problem = pattern_problem(pattern)
    assert problem is not None
    assert reason in problem


def test_unclosed_bracket_reason_says_how_to_write_a_literal_one() -> None:
    assert "write \\[ for a literal '['" in (pattern_problem("[]") or "")
    assert "right after '[' or '[!' is in the set" in (pattern_problem("[!]") or "")
    assert Selector.of(["\\[]"], []).wants("[]")


@pytest.mark.parametrize(
    "pattern", ["*.pdf", "[]]", "[!]]", "[a-c]x", "scans/**/*.pdf", "**", "!x", "#x", "a\\*"]
)
def test_usable_patterns_have_no_problem(pattern: str) -> None:
    assert pattern_problem(pattern) is None
    Selector.of([pattern], [pattern])


def test_selector_equality_ignores_compiled_patterns() -> None:
    assert Selector.of(["*.pdf"], ["x"]) == Selector(("*.pdf",), ("x",))
    assert Selector.of(["*.pdf"], []) != Selector.of(["*.txt"], [])


# --- may_descend ------------------------------------------------------------------------------


def test_may_descend() -> None:
    s = Selector.of([], ["node_modules", "build/cache"])
    assert s.may_descend("docs")
    assert s.may_descend("docs/2024")
    assert s.may_descend("build")
    assert not s.may_descend("node_modules")
    assert not s.may_descend("web/node_modules")
    assert not s.may_descend("build/cache")
    assert not s.may_descend("build/cache/deeper")
    assert not s.may_descend(".git")
    assert not s.may_descend("a/.hidden/b")
    assert s.may_descend("a.b")


def test_may_descend_ignores_include() -> None:
    # A folder may hold wanted files below it whatever its own name.
    s = Selector.of(["*.pdf"], [])
    assert s.may_descend("photos")
    assert s.may_descend("photos/2024")
