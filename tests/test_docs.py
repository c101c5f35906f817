"""The repository stands alone: README / docs links resolve, and nothing cites a document that is not here.

Checks README.md and docs/*.md (relative links and images must point at files that exist), and every
text file under the package, tests, benchmarks, launch, configs and docs (this one included: its
counter-examples are assembled at run time): no citation of the section numbers of a spec that is not in the repository, no path into
a `shared` folder next to the repository, and every repository path written in backticks (a file under
dinov2_jax, tests, docs, benchmarks, launch or configs) exists.
"""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC_FILES = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                                   if f.endswith(".md"))
TEXT_DIRS = ["dinov2_jax", "tests", "benchmarks", "launch", "configs", "docs"]
TEXT_EXT = (".py", ".md", ".sh", ".txt", ".yaml", ".yml", ".cfg", ".toml", "README")

# markdown links / images `[text](target)` and html `src="target"` / `href="target"`
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|(?:src|href)=\"([^\"]+)\"")
SPEC_CITATION = re.compile(r"\bspec\s+(section\s+)?\d|\(section\s+\d+(\.\d+)*\)", re.IGNORECASE)
SHARED_PATH = re.compile(r"\.\./shared")
# a path into this repository written in backticks, e.g. `dinov2_jax/train/ema.py` or `docs/data.md`
REPO_PATH = re.compile(r"`((?:dinov2_jax|tests|docs|benchmarks|launch|configs)/[A-Za-z0-9_./-]+)`")


def _text_files():
    files = ["README.md", "setup.py"]
    for d in TEXT_DIRS:
        for dirpath, _, names in os.walk(os.path.join(ROOT, d)):
            for n in names:
                if n.endswith(TEXT_EXT):
                    files.append(os.path.relpath(os.path.join(dirpath, n), ROOT))
    return sorted(files)


def _read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def _lines_matching(rel, pattern):
    return [f"{rel}:{i}: {line.strip()}" for i, line in enumerate(_read(rel).splitlines(), 1) if pattern.search(line)]


def relative_link_targets(text, keep_anchor=False):
    """Targets of the relative links / images in markdown `text` (no URLs); anchors dropped unless `keep_anchor`
    (then a pure anchor `#sec` is returned as is)."""
    out = []
    for m in LINK.finditer(text):
        target = m.group(1) or m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or (target.startswith("#") and not keep_anchor):
            continue  # http:, https:, mailto: ... or an anchor in the same page
        out.append(target if keep_anchor else target.split("#", 1)[0])
    return out


def heading_anchors(text):
    """GitHub's anchors of the markdown headings of `text` (headings inside code fences are not headings)."""
    anchors, seen, fenced = set(), {}, False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


@pytest.mark.parametrize("doc", DOC_FILES)
def test_relative_links_resolve(doc):
    base = os.path.dirname(os.path.join(ROOT, doc))
    missing = [t for t in relative_link_targets(_read(doc)) if not os.path.exists(os.path.normpath(os.path.join(base, t)))]
    assert not missing, f"{doc}: links to files that do not exist: {missing}"
    bad_anchor = []
    for t in relative_link_targets(_read(doc), keep_anchor=True):
        path, _, anchor = t.partition("#")
        target = os.path.normpath(os.path.join(base, path)) if path else os.path.join(ROOT, doc)
        if anchor and target.endswith(".md") and anchor not in heading_anchors(open(target, encoding="utf-8").read()):
            bad_anchor.append(t)
    assert not bad_anchor, f"{doc}: links to headings that do not exist: {bad_anchor}"


def test_no_external_spec_or_shared_citations():
    bad = []
    for rel in _text_files():
        bad += _lines_matching(rel, SPEC_CITATION) + _lines_matching(rel, SHARED_PATH)
    assert not bad, ("cite the official file by path (e.g. `dinov2/loss/koleo_loss.py`) or explain in our words, "
                     "not a document outside the repo:\n" + "\n".join(bad))


def test_backticked_repo_paths_exist():
    bad = []
    for rel in _text_files():
        for i, line in enumerate(_read(rel).splitlines(), 1):
            for p in REPO_PATH.findall(line):
                p = p.rstrip(".")
                if any(c in p for c in "*<>{}"):
                    continue  # a glob or a placeholder, not a path
                if not os.path.exists(os.path.join(ROOT, p)):
                    bad.append(f"{rel}:{i}: {p}")
    assert not bad, "these files are cited but not in the repository:\n" + "\n".join(bad)


def test_the_checks_catch_what_they_should():
    assert relative_link_targets("see [a](docs/x.md#top), ![i](img.png \"t\"), [w](https://x.org), [s](#sec)") == \
        ["docs/x.md", "img.png"]
    assert relative_link_targets('<img src="docs/p.png" width=3>') == ["docs/p.png"]
    assert relative_link_targets("[a](x.md#sec) [b](#top)", keep_anchor=True) == ["x.md#sec", "#top"]
    assert heading_anchors("# A b\n```\n# not a heading\n```\n## Scaling out: mesh (`pkg/`)\n## A b") == \
        {"a-b", "scaling-out-mesh-pkg", "a-b-1"}
    spec, section = "spec", "section"  # split so that this file does not cite what it forbids
    assert SPEC_CITATION.search(f"as in ({spec} 5.2)") and SPEC_CITATION.search(f"{spec.title()} 2 says")
    assert SPEC_CITATION.search(f"# {spec} {section} 8.1: sizes") and SPEC_CITATION.search(f"every key ({section} 6.1)")
    assert not SPEC_CITATION.search("PartitionSpec(None)") and not SPEC_CITATION.search("dataset spec string")
    assert SHARED_PATH.search("see " + "../" + "shared/reference/x.md")
    missing = "dinov2_jax/" + "no_such.py"
    assert REPO_PATH.findall(f"in `{missing}` and `dinov2/loss/koleo_loss.py`") == [missing]
