"""Function and branch coverage of the Lua library, by instrumenting a copy of it.

``instrument(source)`` marks the start of every function body and of every arm of
every ``if`` (``then``, each ``elseif``, ``else``, and the implicit ``else`` of an
``if`` that has none) with ``COVERED[n] = true``, on the same line as the code it
marks, so line numbers stay those of the file. ``Points`` names each mark by its
function and line, for a failure message that says what was never reached.

A small tokenizer, enough for this library's Lua 5.1: comments, quoted strings and
long brackets are skipped; ``for``/``while`` open their block at ``do``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r"--\[(?P<level>=*)\[.*?\](?P=level)\]"  # long comment
    r"|--[^\n]*"  # comment
    r"|\[(?P<slevel>=*)\[.*?\](?P=slevel)\]"  # long string
    r"|'(?:\\.|[^'\\\n])*'"
    r'|"(?:\\.|[^"\\\n])*"'
    r"|(?P<word>[A-Za-z_]\w*)"
    r"|(?P<punct>[()])",
    re.DOTALL,
)
_OPENERS = {"function", "if", "do", "repeat"}


@dataclass
class Points:
    """What each mark stands for, by a name that survives edits elsewhere in the file
    (``function acquire``, ``acquire: if c.now < s.open_until``, ``acquire: else of
    if ...``, ``acquire: none of if ...``), and the line it is on."""

    names: dict[int, str] = field(default_factory=dict)
    lines: dict[int, int] = field(default_factory=dict)

    def add(self, name: str, line: int) -> int:
        number = len(self.names) + 1
        self.names[number] = name
        self.lines[number] = line
        return number

    def unreached(self, reached: set[int]) -> dict[str, int]:
        """The marks never reached: name -> line."""
        return {
            self.names[number]: self.lines[number]
            for number in sorted(self.names)
            if number not in reached
        }


@dataclass
class _Block:
    kind: str
    name: str = ""
    has_else: bool = False
    awaits_do: bool = False
    condition: str = ""  # of an if: what its arms are named after
    start: int = 0  # where the condition being read starts


def instrument(source: str, table: str = "COVERED") -> tuple[str, Points]:
    """``source`` with a mark at each function and branch, and what each mark is."""
    points = Points()
    inserts: list[tuple[int, str]] = []
    stack: list[_Block] = []
    tokens = [m for m in _TOKEN.finditer(source) if m.group("word") or m.group("punct")]

    def line_of(offset: int) -> int:
        return source.count("\n", 0, offset) + 1

    def function_name() -> str:
        return next((b.name for b in reversed(stack) if b.kind == "function"), "(chunk)")

    def mark(offset: int, what: str, text: str) -> None:
        number = points.add(what, line_of(offset))
        inserts.append((offset, text.format(f"{table}[{number}] = true;")))

    def condition(block: _Block, then: re.Match[str]) -> str:
        return " ".join(source[block.start : then.start()].split())[:70]

    for index, token in enumerate(tokens):
        word = token.group("word")
        if word == "function":
            following = tokens[index + 1]
            name = following.group("word") if following.group("word") else "(anonymous)"
            close = next(t for t in tokens[index:] if t.group("punct") == ")")
            stack.append(_Block("function", name))
            mark(close.end(), f"function {name}", " {}")
        elif word in ("if", "elseif"):
            if word == "if":
                stack.append(_Block("if"))
            stack[-1].start = token.end()
        elif word == "then":
            block = stack[-1]
            assert block.kind == "if", f"then outside an if at line {line_of(token.start())}"
            arm = condition(block, token)
            block.condition = block.condition or arm
            mark(token.end(), f"{function_name()}: if {arm}", " {}")
        elif word == "else":
            block = stack[-1]
            block.has_else = True
            mark(token.end(), f"{function_name()}: else of if {block.condition}", " {}")
        elif word in ("for", "while"):
            stack.append(_Block("loop", awaits_do=True))
        elif word == "do":
            if stack and stack[-1].awaits_do:
                stack[-1].awaits_do = False
            else:
                stack.append(_Block("do"))
        elif word == "repeat":
            stack.append(_Block("repeat"))
        elif word in ("end", "until"):
            block = stack.pop()
            if block.kind == "if" and not block.has_else:
                what = f"{function_name()}: none of if {block.condition}"
                mark(token.start(), what, "else {} ")
    assert not stack, f"unbalanced blocks: {[b.kind for b in stack]}"
    for offset, text in sorted(inserts, key=lambda item: item[0], reverse=True):
        source = source[:offset] + text + source[offset:]
    # The table, on the first line of code (after a ``#!lua`` line), so lines stay put.
    first = source.index("\n") + 1 if source.startswith("#!") else 0
    return f"{source[:first]}{table} = {{}}; {source[first:]}", points
