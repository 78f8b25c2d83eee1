"""Where an expression's error is, in the text as its author wrote it (docs/definitions.md:
"counted in the text as written").

The parser sees the text stripped, with its line breaks as Python reads them (``\\r\\n``,
a lone ``\\r`` and ``\\n`` each end a line). A position it reports is mapped back: the
blanks stripped from the first line are added to that line's columns, lines are counted
from the text's own first line, and a syntax tree node's column, which ``ast`` gives as
a UTF-8 byte offset, is counted in characters (``'é'`` is two bytes, one column).
"""

from __future__ import annotations


class Where:
    """A position in the text as written, from one in the text parsed (stripped): the
    column, and the line too when the text has several (a YAML block keeps its breaks)."""

    def __init__(self, text: str) -> None:
        text = text.replace("\r\n", "\n").replace("\r", "\n")  # line breaks as Python's parser reads them
        lead = len(text) - len(text.lstrip())
        self.lines_before = text.count("\n", 0, lead)
        self.first_column = lead - (text.rfind("\n", 0, lead) + 1)  # blanks stripped from its line
        self.lines = "\n" in text.rstrip()  # (a YAML block's last line break is no line)
        self._parsed = text.strip().split("\n")  # the lines the parser read

    def at(self, line: int, column: int) -> str:
        """``column``: 1-based, in characters of the parsed text's ``line`` (1-based)."""
        if line == 1:
            column += self.first_column
        return f"line {line + self.lines_before}, column {column}" if self.lines else f"column {column}"

    def end(self) -> str:
        """Just past the text's last character (Python's parser gives no column for an
        error at the end of its input: ``x +``)."""
        return self.at(len(self._parsed), len(self._parsed[-1]) + 1)

    def of_error(self, e: SyntaxError, parsed: str) -> str:
        """A syntax error's position. Python gives it in characters, but for a few errors
        in UTF-8 bytes (leading zeros: ``'é' + 09``), none at the end of the input (``x +``),
        and none for a NUL (its place is given)."""
        if "\0" in parsed:
            before = parsed[: parsed.index("\0")].replace("\r\n", "\n").replace("\r", "\n")
            return self.at(before.count("\n") + 1, len(before) - before.rfind("\n"))
        if not e.offset:
            return self.end()
        if e.msg.startswith("leading zeros") and e.text:
            return self.at_node(e.lineno or 1, e.offset - 1)
        return self.at(e.lineno or 1, e.offset)

    def at_node(self, line: int, byte_offset: int) -> str:
        """A syntax tree node's position: its 1-based line, its 0-based UTF-8 byte offset."""
        text = self._parsed[line - 1] if 0 < line <= len(self._parsed) else ""
        chars = len(text.encode()[:byte_offset].decode(errors="ignore"))  # (a cut character: not counted)
        return self.at(line, chars + 1)
