"""A parser for the POSIX shell subset a host sends to a phone: the device's ``/system/bin/sh`` in Python.

Supported: quoting ('...', "...", backslash), ``$VAR ${VAR} ${VAR:-x} $? $$ $# $1.. $@ $(...) `...` $((...))``,
``; & && || | !``, newlines, comments, redirections (``> >> < 2> 2>&1 >&2 &> >|``), ``VAR=value`` prefixes,
``if/elif/else/fi``, ``for/in/do/done``, ``while``/``until``, ``{ ...; }``, ``( ... )`` and ``name() { ...; }``.
Not supported (a syntax error, never a fallback to a host shell): here-documents and ``case``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SH = "/system/bin/sh"  # how the device's shell names itself in messages
KEYWORDS = {"if", "then", "elif", "else", "fi", "for", "in", "do", "done", "while", "until", "{", "}", "!", "case",
            "esac"}
OPERATORS = ("&&", "||", ";;", ">>", ">&", "<&", ">|", "<<", "&>", ";", "&", "|", "(", ")", "<", ">")
REDIRECTIONS = {">", ">>", "<", ">&", "<&", ">|", "&>"}
SPECIAL_VARS = set("?$#!@*-0123456789")


class ShellSyntaxError(Exception):
    pass


@dataclass
class Part:
    kind: str  # "lit", "var", "cmd" or "arith"
    text: str
    quoted: bool


@dataclass
class Word:
    parts: list[Part] = field(default_factory=list)

    def plain(self) -> str | None:
        """The word's text when it is one unquoted literal (how keywords and names are recognised)."""
        if len(self.parts) == 1 and self.parts[0].kind == "lit" and not self.parts[0].quoted:
            return self.parts[0].text
        return None


@dataclass
class Op:
    op: str
    fd: int | None = None


@dataclass
class Redir:
    fd: int | None
    op: str
    target: Word


@dataclass
class Simple:
    assigns: list[tuple[str, Word]]
    words: list[Word]
    redirs: list[Redir]


@dataclass
class Pipeline:
    commands: list
    negate: bool = False


@dataclass
class AndOr:
    first: Pipeline
    rest: list[tuple[str, Pipeline]]


@dataclass
class Seq:
    items: list[tuple[AndOr, bool]]  # (command, run in background)


@dataclass
class If:
    clauses: list[tuple[Seq, Seq]]
    otherwise: Seq | None
    redirs: list[Redir] = field(default_factory=list)


@dataclass
class For:
    name: str
    words: list[Word] | None
    body: Seq
    redirs: list[Redir] = field(default_factory=list)


@dataclass
class While:
    cond: Seq
    body: Seq
    until: bool
    redirs: list[Redir] = field(default_factory=list)


@dataclass
class Group:
    body: Seq
    subshell: bool
    redirs: list[Redir] = field(default_factory=list)


@dataclass
class FuncDef:
    name: str
    body: object


def _matching(src: str, i: int, open_: str, close: str) -> int:
    """Index of the ``close`` matching the ``open_`` just before ``i``, skipping quotes."""
    depth = 1
    while i < len(src):
        c = src[i]
        if c == "\\":
            i += 2
            continue
        if c == "'":
            end = src.find("'", i + 1)
            if end < 0:
                break
            i = end + 1
            continue
        if c == '"':
            i += 1
            while i < len(src) and src[i] != '"':
                i += 2 if src[i] == "\\" else 1
            i += 1
            continue
        if c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ShellSyntaxError(f"missing '{close}'")


def tokenize(src: str) -> list:
    tokens: list = []
    word = Word()
    started = False
    i, n = 0, len(src)

    def add(text: str, quoted: bool, kind: str = "lit") -> None:
        nonlocal started
        started = True
        last = word.parts[-1] if word.parts else None
        if kind == "lit" and last is not None and last.kind == "lit" and last.quoted == quoted:
            last.text += text
        else:
            word.parts.append(Part(kind, text, quoted))

    def flush() -> None:
        nonlocal word, started
        if started:
            tokens.append(word)
        word, started = Word(), False

    def expansion(i: int, quoted: bool) -> int:
        """Parse the expansion starting at src[i] == '$'; returns the index after it."""
        if src.startswith("$((", i):
            end = src.find("))", i + 3)
            if end < 0:
                raise ShellSyntaxError("missing '))'")
            add(src[i + 3:end], quoted, "arith")
            return end + 2
        if src.startswith("$(", i):
            end = _matching(src, i + 2, "(", ")")
            add(src[i + 2:end], quoted, "cmd")
            return end + 1
        if src.startswith("${", i):
            end = src.find("}", i + 2)
            if end < 0:
                raise ShellSyntaxError("missing '}'")
            add(src[i + 2:end], quoted, "var")
            return end + 1
        j = i + 1
        if j < n and src[j] in SPECIAL_VARS:
            add(src[j], quoted, "var")
            return j + 1
        while j < n and (src[j].isalnum() or src[j] == "_"):
            j += 1
        if j == i + 1:
            add("$", quoted)
            return j
        add(src[i + 1:j], quoted, "var")
        return j

    def backquote(i: int, quoted: bool) -> int:
        j, body = i + 1, []
        while j < n and src[j] != "`":
            if src[j] == "\\" and j + 1 < n and src[j + 1] in "`\\$":
                j += 1
            body.append(src[j])
            j += 1
        if j >= n:
            raise ShellSyntaxError("missing '`'")
        add("".join(body), quoted, "cmd")
        return j + 1

    while i < n:
        c = src[i]
        if c in " \t":
            flush()
            i += 1
        elif c == "\n":
            flush()
            tokens.append(Op("\n"))
            i += 1
        elif c == "#" and not started:
            while i < n and src[i] != "\n":
                i += 1
        elif c == "\\":
            if i + 1 < n and src[i + 1] == "\n":
                i += 2
            else:
                add(src[i + 1:i + 2], True)
                i += 2
        elif c == "'":
            end = src.find("'", i + 1)
            if end < 0:
                raise ShellSyntaxError("unterminated quoted string")
            add(src[i + 1:end], True)
            i = end + 1
        elif c == '"':
            i += 1
            add("", True)
            while True:
                if i >= n:
                    raise ShellSyntaxError("unterminated quoted string")
                c = src[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n and src[i + 1] in '$`"\\\n':
                    if src[i + 1] != "\n":
                        add(src[i + 1], True)
                    i += 2
                elif c == "$":
                    i = expansion(i, True)
                elif c == "`":
                    i = backquote(i, True)
                else:
                    add(c, True)
                    i += 1
        elif c == "$":
            i = expansion(i, False)
        elif c == "`":
            i = backquote(i, False)
        elif c in "|&;()<>":
            op = next(o for o in OPERATORS if src.startswith(o, i))
            if op == "<<":
                raise ShellSyntaxError("here-documents are not supported by the virtual phone")
            fd = None
            plain = word.plain()
            if op in REDIRECTIONS and plain is not None and plain.isdigit():
                fd, word, started = int(plain), Word(), False
            flush()
            tokens.append(Op(op, fd))
            i += len(op)
        else:
            add(c, False)
            i += 1
    flush()
    return tokens


class Parser:
    def __init__(self, tokens: list) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self):
        tok = self.peek()
        self.i += 1
        return tok

    def at_op(self, *ops: str) -> bool:
        tok = self.peek()
        return isinstance(tok, Op) and tok.op in ops

    def at_word(self, *keywords: str) -> bool:
        tok = self.peek()
        return isinstance(tok, Word) and tok.plain() in keywords

    def expect_word(self, keyword: str) -> None:
        self.skip_newlines()
        if not self.at_word(keyword):
            raise ShellSyntaxError(f"syntax error: expected '{keyword}'")
        self.take()

    def skip_newlines(self) -> None:
        while self.at_op("\n"):
            self.take()

    def parse(self) -> Seq:
        seq = self.parse_list(set())
        if self.peek() is not None:
            raise ShellSyntaxError(f"syntax error: unexpected '{self._describe(self.peek())}'")
        return seq

    @staticmethod
    def _describe(tok) -> str:
        return tok.op if isinstance(tok, Op) else "".join(p.text for p in tok.parts)

    def parse_list(self, terminators: set[str]) -> Seq:
        items: list[tuple[AndOr, bool]] = []
        while True:
            while self.at_op("\n", ";"):
                self.take()
            tok = self.peek()
            if tok is None or self.at_op(")", ";;") or self.at_word(*terminators):
                return Seq(items)
            node = self.parse_and_or()
            background = False
            if self.at_op(";", "&", "\n"):
                background = self.take().op == "&"
                items.append((node, background))
                continue
            items.append((node, background))
            return Seq(items)

    def parse_and_or(self) -> AndOr:
        first = self.parse_pipeline()
        rest = []
        while self.at_op("&&", "||"):
            op = self.take().op
            self.skip_newlines()
            rest.append((op, self.parse_pipeline()))
        return AndOr(first, rest)

    def parse_pipeline(self) -> Pipeline:
        negate = False
        if self.at_word("!"):
            self.take()
            negate = True
        commands = [self.parse_command()]
        while self.at_op("|"):
            self.take()
            self.skip_newlines()
            commands.append(self.parse_command())
        return Pipeline(commands, negate)

    def parse_redirs(self) -> list[Redir]:
        redirs = []
        while isinstance(self.peek(), Op) and self.peek().op in REDIRECTIONS:
            op = self.take()
            target = self.take()
            if not isinstance(target, Word):
                raise ShellSyntaxError(f"syntax error: missing target for '{op.op}'")
            redirs.append(Redir(op.fd, op.op, target))
        return redirs

    def parse_command(self):
        tok = self.peek()
        if tok is None:
            raise ShellSyntaxError("syntax error: unexpected end of input")
        keyword = tok.plain() if isinstance(tok, Word) else None
        if keyword in ("if", "for", "while", "until", "{"):
            node = {"if": self.parse_if, "for": self.parse_for, "while": self.parse_while,
                    "until": self.parse_while, "{": self.parse_group}[keyword]()
            node.redirs = self.parse_redirs()
            return node
        if keyword in ("case", "esac"):
            raise ShellSyntaxError("'case' is not supported by the virtual phone")
        if keyword in KEYWORDS:
            raise ShellSyntaxError(f"syntax error: unexpected '{keyword}'")
        if self.at_op("("):
            self.take()
            body = self.parse_list(set())
            if not self.at_op(")"):
                raise ShellSyntaxError("syntax error: expected ')'")
            self.take()
            return Group(body, True, self.parse_redirs())
        if (keyword is not None and self.i + 2 < len(self.tokens) and isinstance(self.tokens[self.i + 1], Op)
                and self.tokens[self.i + 1].op == "(" and isinstance(self.tokens[self.i + 2], Op)
                and self.tokens[self.i + 2].op == ")"):
            self.i += 3
            self.skip_newlines()
            return FuncDef(keyword, self.parse_command())
        return self.parse_simple()

    def parse_simple(self) -> Simple:
        assigns, words, redirs = [], [], []
        while True:
            tok = self.peek()
            if isinstance(tok, Word):
                self.take()
                first = tok.parts[0] if tok.parts else None
                if (not words and first is not None and first.kind == "lit" and not first.quoted
                        and "=" in first.text and first.text.split("=", 1)[0].isidentifier()):
                    name, value = first.text.split("=", 1)
                    assigns.append((name, Word([Part("lit", value, False), *tok.parts[1:]])))
                else:
                    words.append(tok)
            elif isinstance(tok, Op) and tok.op in REDIRECTIONS:
                redirs.extend(self.parse_redirs())
            else:
                break
        if not (assigns or words or redirs):
            raise ShellSyntaxError(f"syntax error: unexpected '{self._describe(tok) if tok else 'end of input'}'")
        return Simple(assigns, words, redirs)

    def parse_if(self) -> If:
        self.take()
        clauses = []
        cond = self.parse_list({"then"})
        self.expect_word("then")
        body = self.parse_list({"elif", "else", "fi"})
        clauses.append((cond, body))
        otherwise = None
        while True:
            self.skip_newlines()
            if self.at_word("elif"):
                self.take()
                cond = self.parse_list({"then"})
                self.expect_word("then")
                clauses.append((cond, self.parse_list({"elif", "else", "fi"})))
            elif self.at_word("else"):
                self.take()
                otherwise = self.parse_list({"fi"})
            else:
                self.expect_word("fi")
                return If(clauses, otherwise)

    def parse_for(self) -> For:
        self.take()
        name = self.take()
        if not isinstance(name, Word) or not (name.plain() or "").isidentifier():
            raise ShellSyntaxError("syntax error: bad for loop variable")
        words = None
        self.skip_newlines()
        if self.at_word("in"):
            self.take()
            words = []
            while isinstance(self.peek(), Word):
                words.append(self.take())
        while self.at_op(";", "\n"):
            self.take()
        self.expect_word("do")
        body = self.parse_list({"done"})
        self.expect_word("done")
        return For(name.plain() or "", words, body)

    def parse_while(self) -> While:
        until = self.take().plain() == "until"
        cond = self.parse_list({"do"})
        self.expect_word("do")
        body = self.parse_list({"done"})
        self.expect_word("done")
        return While(cond, body, until)

    def parse_group(self) -> Group:
        self.take()
        body = self.parse_list({"}"})
        self.expect_word("}")
        return Group(body, False)


def parse(src: str) -> Seq:
    return Parser(tokenize(src)).parse()
