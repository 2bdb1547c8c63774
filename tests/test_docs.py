"""README.md and docs/*.md: relative links and images lead somewhere, the README stays short and
links every page of docs/, and its Test section gives both test commands. Pure text checks."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # https:, mailto:, ...


def prose(text):
    """The text without fenced code blocks and inline code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading):
    """GitHub's anchor for a heading: lowercase, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = INLINE_CODE.sub(lambda m: m.group(0).strip("`"), heading.strip()).lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    """Every anchor of a Markdown file, with GitHub's -1, -2, ... for repeated headings."""
    seen, result = {}, set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def links(path):
    return LINK.findall(prose(path.read_text(encoding="utf-8")))


def test_the_pages_exist():
    assert README.is_file() and DOCS


def test_relative_links_and_images_point_to_files_and_headings_that_exist():
    broken = []
    for page in PAGES:
        for target in links(page):
            if EXTERNAL.match(target):
                continue
            file, _, anchor = target.partition("#")
            if file.startswith("/"):
                broken.append(f"{page.name}: {target} (absolute, not relative)")
                continue
            linked = (page.parent / file).resolve() if file else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no heading '#{anchor}')")
    assert not broken, "\n".join(broken)


def test_the_checker_sees_the_links_it_checks():
    """Guards the regular expressions: the README's figure and docs links are found."""
    found = links(README)
    assert "docs/digits_softmax.png" in found
    assert any(target.startswith("docs/reproduce.md") for target in found)
    assert slug("The paper's workflow (CIFAR-10, CIFAR-100, Tiny-ImageNet)") == \
        "the-papers-workflow-cifar-10-cifar-100-tiny-imagenet"
    assert slug("Methods and --set") == "methods-and---set"


def test_readme_is_at_most_280_lines():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= 280, f"README.md has {lines} lines; move a topic into docs/"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / target.partition("#")[0]).resolve()
              for target in links(README) if not EXTERNAL.match(target)}
    orphans = [page.name for page in DOCS if page.resolve() not in linked]
    assert not orphans, f"docs pages not linked from README.md: {orphans}"


def test_readme_test_section_gives_both_test_commands():
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Test[ \t]*\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, "README.md has no '## Test' section"
    blocks = [b.strip() for b in re.findall(r"^```bash\n(.*?)^```", match.group(1), re.S | re.M)]
    commands = {line.split("#")[0].strip() for block in blocks for line in block.splitlines()}
    assert 'python -m pytest -q -m "not slow"' in commands
    assert "python -m pytest -q" in commands
