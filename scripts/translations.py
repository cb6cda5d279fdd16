"""The Chinese edition's catalogues (locale/zh_CN/LC_MESSAGES), for translators and for the tests.

    python scripts/translations.py list FILE.po          the messages still to translate, numbered
    python scripts/translations.py fill FILE.po FILE.txt  write translations: lines "N<TAB>translation"
    python scripts/translations.py check FILE.po ...      every problem; exit 1 if there is any

What a translated catalogue must keep from the English (``check``, and ``tests/test_translations.py``):
every message translated and not fuzzy, and the parts of a message that are not prose left exactly as they
were.

Not prose: inline code (`` `await` ``), the targets of roles and links (``{doc}`text <target>```,
``[text](target)``), math (``$...$``) and substitutions (``{{ name }}``). The text of a role or a link is
prose and is translated; its target is not.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

from babel.messages.pofile import read_po

ROLE = re.compile(r"\{([\w:-]+)\}`([^`]*)`")
CODE = re.compile(r"(?<![}`])(`+)(?!`)(.+?)(?<!`)\1(?!`)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
AUTOLINK = re.compile(r"<(https?://[^>\s]+)>")
MATH = re.compile(r"(?<![\\$])\$([^$\n]+)\$")
SUBSTITUTION = re.compile(r"\{\{[^}]*\}\}")


def _role_target(content: str) -> str:
    """``text <target>`` -> ``target``; a bare ``target`` stays as it is."""
    match = re.search(r"<([^<>]+)>\s*$", content)
    return match.group(1) if match else content


def kept_parts(text: str) -> Counter:
    """The parts of a message that a translation must keep, each with how often it occurs."""
    parts: Counter = Counter()
    for name, content in ROLE.findall(text):
        parts[f"role {{{name}}} -> {_role_target(content)}"] += 1
    without_roles = ROLE.sub(" ", text)
    for _, code in CODE.findall(without_roles):
        parts[f"code `{code}`"] += 1
    for pattern, kind in ((LINK, "link"), (AUTOLINK, "link"), (MATH, "math"), (SUBSTITUTION, "substitution")):
        for found in pattern.findall(without_roles if kind != "math" else CODE.sub(" ", without_roles)):
            parts[f"{kind} {found}"] += 1
    return parts


AFTER_PUNCTUATION = re.compile(r"[，。：；！？、）”」](\*\*?)(?=[^\s，。：；！？、（）“”*])")


def _unclosed_emphasis(text: str) -> bool:
    """Whether a closing ``*``/``**`` follows full-width punctuation and precedes text: "**时长。**是" renders
    the asterisks, because such a delimiter is not right-flanking."""
    return any(text[:m.start(1)].count(m.group(1)) % 2 == 1 for m in AFTER_PUNCTUATION.finditer(text))


def problems(path: Path) -> list[str]:
    """Every way ``path`` falls short: untranslated, fuzzy, or a kept part missing or changed."""
    with open(path, "rb") as f:
        catalog = read_po(f)
    found = []
    for message in catalog:
        if not message.id:
            continue  # the header
        short = message.id if len(message.id) < 70 else message.id[:67] + "..."
        if not message.string:
            found.append(f"{path}: not translated: {short!r}")
            continue
        if message.fuzzy:
            found.append(f"{path}: fuzzy (the English changed; translate it again): {short!r}")
            continue
        if re.match(r"\d+[.)] ", message.string):
            # A heading "1. Blocking the loop" is a title in the English source, but its translation is parsed
            # alone, where "1. " starts a list: Sphinx then keeps the English title. "1\\. " stays text.
            found.append(f"{path}: {short!r}: starts with a list marker; write it as "
                         f"{message.string.split(' ', 1)[0][:-1]}\\{message.string.split(' ', 1)[0][-1]} ...")
            continue
        if _unclosed_emphasis(message.string):
            found.append(f"{path}: {short!r}: a closing * or ** right after full-width punctuation and before "
                         f"text does not close (CommonMark): put the punctuation after it, **粗体**。")
            continue
        want, got = kept_parts(message.id), kept_parts(message.string)
        if want != got:
            missing, extra = sorted((want - got).elements()), sorted((got - want).elements())
            found.append(f"{path}: {short!r}: missing {missing}, not in the English {extra}")
    return found


def _messages(catalog):
    return [m for m in catalog if m.id]


def to_translate(path: Path) -> list[tuple[int, str]]:
    """(number, English) of every message that is empty or fuzzy; the numbers are what ``fill`` takes."""
    with open(path, "rb") as f:
        catalog = read_po(f)
    return [(n, m.id) for n, m in enumerate(_messages(catalog), 1) if not m.string or m.fuzzy]


def fill(path: Path, translations: dict[int, str]) -> None:
    """Set message N's translation for each N given and clear its fuzzy flag; the rest is left as it was."""
    from babel.messages.pofile import write_po

    with open(path, "rb") as f:
        catalog = read_po(f)
    messages = _messages(catalog)
    for n, text in translations.items():
        if not 1 <= n <= len(messages):
            raise SystemExit(f"{path} has messages 1..{len(messages)}, not {n}")
        messages[n - 1].string = text
        messages[n - 1].flags.discard("fuzzy")
    with open(path, "wb") as f:
        write_po(f, catalog, width=0, omit_header=False)


def _read_numbered(path: Path) -> dict[int, str]:
    found = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        number, sep, text = line.partition("\t")
        if not sep or not number.strip().isdigit():
            raise SystemExit(f"{path}:{line_no}: expected 'N<TAB>translation', got {line[:60]!r}")
        found[int(number)] = text.strip()
    return found


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "list":
        for n, english in to_translate(Path(argv[1])):
            print(f"{n}\t{english}")
        return 0
    if len(argv) == 3 and argv[0] == "fill":
        fill(Path(argv[1]), _read_numbered(Path(argv[2])))
        argv = ["check", argv[1]]
    if len(argv) >= 2 and argv[0] == "check":
        found = [problem for p in argv[1:] for problem in problems(Path(p))]
        print("\n".join(found) if found else f"ok: {len(argv) - 1} catalogue(s)")
        return 1 if found else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
