"""Word expansion for the phone's shell: parameters, command substitution, arithmetic, field splitting, globbing.

Globs are matched against the sandbox only (``Sandbox.host``), never against the host's own folders.
"""

from __future__ import annotations

import ast
import fnmatch
import operator
import os
import re
from typing import TYPE_CHECKING

from .shlang import SH, ShellSyntaxError, Word

if TYPE_CHECKING:
    from .interp import Shell

_ARITH_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
              ast.Mod: operator.mod, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
              ast.GtE: operator.ge, ast.Eq: operator.eq, ast.NotEq: operator.ne}


class Expansions:
    """Mixed into ``Shell``: turns parsed words into argument strings."""

    def lookup(self, name: str) -> str:
        if name == "?":
            return str(self.status)
        if name == "$":
            return str(self.pid)
        if name == "#":
            return str(len(self.args))
        if name in ("@", "*"):
            return " ".join(self.args)
        if name == "0":
            return SH
        if name.isdigit():
            index = int(name)
            return self.args[index - 1] if index <= len(self.args) else ""
        if name == "!":
            return ""
        return self.vars.get(name, "")

    def parameter(self, text: str) -> str:
        if text.startswith("#") and len(text) > 1:
            return str(len(self.lookup(text[1:])))
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*|[?$#@*0-9!])(:?[-=+?])?(.*)", text, re.S)
        if match is None:
            raise ShellSyntaxError(f"${{{text}}}: bad substitution")
        name, op, word = match.groups()
        value = self.lookup(name)
        unset = name not in self.vars and not (name in "?$#@*!" or name.isdigit())
        empty = unset or (op is not None and op.startswith(":") and value == "")
        if op is None:
            return value
        if op.endswith("-"):
            return word if empty else value
        if op.endswith("="):
            if empty:
                self.vars[name] = word
                return word
            return value
        if op.endswith("+"):
            return "" if empty else word
        if empty:
            raise ShellSyntaxError(f"{name}: {word or 'parameter not set'}")
        return value

    def substitute(self: Shell, src: str) -> str:
        from .interp import IO, BufferOut, In

        child = self.subshell()
        out = BufferOut()
        child.run(src, IO(In(), out, self.stderr))
        self.status = child.status
        return bytes(out.buffer).decode("utf-8", "surrogateescape").rstrip("\n")

    def arithmetic(self, expr: str) -> str:
        expr = re.sub(r"\$?([A-Za-z_][A-Za-z0-9_]*)", lambda m: self.vars.get(m.group(1), "0") or "0", expr)
        expr = expr.replace("/", "//").replace("&&", " and ").replace("||", " or ")

        def ev(node):
            if isinstance(node, ast.Expression):
                return ev(node.body)
            if isinstance(node, ast.Constant) and isinstance(node.value, int):
                return node.value
            if isinstance(node, ast.BinOp) and type(node.op) in _ARITH_OPS:
                return _ARITH_OPS[type(node.op)](ev(node.left), ev(node.right))
            if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
                return -ev(node.operand)
            if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _ARITH_OPS:
                return int(_ARITH_OPS[type(node.ops[0])](ev(node.left), ev(node.comparators[0])))
            raise ShellSyntaxError(f"arithmetic syntax error: {expr}")
        try:
            return str(ev(ast.parse(expr.strip() or "0", mode="eval")))
        except (SyntaxError, ZeroDivisionError) as exc:
            raise ShellSyntaxError(f"arithmetic error: {expr}") from exc

    def expand(self, word: Word) -> list[str]:
        """Fields of a word: expansions, field splitting of unquoted results, then globbing."""
        fields: list[list[tuple[str, bool]]] = [[]]
        keep = [False]

        def new_field() -> None:
            fields.append([])
            keep.append(False)

        for part in word.parts:
            if part.kind == "lit":
                fields[-1].append((part.text, part.quoted))
                keep[-1] = keep[-1] or part.quoted or bool(part.text)
                continue
            if part.kind == "var" and part.text == "@" and part.quoted:
                for index, arg in enumerate(self.args):
                    if index:
                        new_field()
                    fields[-1].append((arg, True))
                    keep[-1] = True
                continue
            value = (self.parameter(part.text) if part.kind == "var" else self.substitute(part.text)
                     if part.kind == "cmd" else self.arithmetic(part.text))
            if part.quoted:
                fields[-1].append((value, True))
                keep[-1] = True
                continue
            pieces = value.split()
            if value[:1].isspace() and keep[-1]:
                new_field()
            for index, piece in enumerate(pieces):
                if index:
                    new_field()
                fields[-1].append((piece, False))
                keep[-1] = True
            if value[-1:].isspace() and pieces:
                new_field()
        result = []
        for segments, kept in zip(fields, keep, strict=True):
            if not kept:
                continue
            if any(not quoted and re.search(r"[*?[]", text) for text, quoted in segments):
                pattern = "".join(text if not quoted else re.sub(r"([*?[])", r"[\1]", text)
                                  for text, quoted in segments)
                matches = self.glob(pattern)
                if matches:
                    result.extend(matches)
                    continue
            result.append("".join(text for text, _ in segments))
        return result

    def expand_one(self, word: Word) -> str:
        return " ".join(self.expand(word)) if any(p.kind != "lit" for p in word.parts) or len(word.parts) != 1 \
            else word.parts[0].text

    def glob(self, pattern: str) -> list[str]:
        absolute = pattern.startswith("/")
        candidates = [""]
        for component in [c for c in pattern.split("/") if c]:
            matched = []
            for prefix in candidates:
                folder = self.path(("/" if absolute else "") + prefix or ".")
                try:
                    names = sorted(os.listdir(self.fs.host(folder)))
                except OSError:
                    continue
                for name in names:
                    if name.startswith(".") and not component.startswith("."):
                        continue
                    if fnmatch.fnmatchcase(name, component):
                        matched.append(f"{prefix}/{name}" if prefix else name)
            candidates = matched
        return [("/" if absolute else "") + c for c in candidates if c]

