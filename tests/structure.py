#!/usr/bin/env python3
"""The shape of src/, checked: the limits the code base holds itself to.

- no two source files import each other in a circle (a mod.rs and its own children aside);
- the stages in lib.rs are in pipeline order: a stage uses only the stages declared before it;
- no source file has more than 1,000 lines before its unit tests;
- `unsafe` code lives in at most 3 files;
- at most 6 `Result<_, String>` (clap's value parsers want them).

Prints one line per breach and exits 1 when there is any; `--report` prints the figures only.
Reads the source as text: imports are `crate::`, `super::` and `self::` paths, in `use` items
(braces expanded) and inline in code, with comments and string literals left out.
"""

import os
import re
import sys

MAX_LINES = 1000
MAX_UNSAFE_FILES = 3
MAX_STRING_RESULTS = 6

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def module_of(rel):
    """src-relative file path -> module path (list of names); None for the binary's root."""
    parts = rel[:-3].split("/")
    if parts == ["lib"]:
        return []
    if parts == ["main"]:
        return None
    if parts[-1] == "mod":
        parts = parts[:-1]
    return parts


def strip(text):
    """The text with comments and string/char literals blanked, lines kept."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    out.append("\n" if text[i] == "\n" else "")
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 8]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            end = n if end < 0 else end + 1 + len(hashes)
            out.append('""' + "\n" * text.count("\n", i, end))
            i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]) or re.match(r"'\\u\{[0-9a-fA-F]+\}'", text[i:i + 12] or ""):
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:])
            out.append("' '")
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e'] (aliases and globs dropped)."""
    tree = re.sub(r"\s+", "", tree)
    depth, start = 0, None
    for k, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                start = k
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                prefix, inner, rest = tree[:start], tree[start + 1:k], tree[k + 1:]
                items, d, cur = [], 0, ""
                for c in inner:
                    if c == "," and d == 0:
                        items.append(cur)
                        cur = ""
                        continue
                    d += c == "{"
                    d -= c == "}"
                    cur += c
                items.append(cur)
                paths = []
                for item in items:
                    if not item:
                        continue
                    if item == "self":
                        paths.append(prefix.rstrip(":"))
                    else:
                        paths.extend(expand_use(prefix + item + rest))
                return paths
    return [re.sub(r"as\w+$", "", tree.split("::*")[0])]


def targets(text):
    """Every crate-relative path a file names: use items expanded, then inline paths."""
    paths = []
    for m in re.finditer(r"\buse\s+([^;]*);", text):
        paths.extend(expand_use(m.group(1)))
    no_use = re.sub(r"\buse\s+[^;]*;", "", text)
    paths.extend(m.group(0) for m in re.finditer(r"\b(?:crate|super|self)(?:::\w+)+", no_use))
    return [p for p in paths if re.match(r"(crate|super|self)\b", p)]


def resolve(path, here, is_mod, files):
    """A path as written in the module `here` -> the file that defines its longest prefix."""
    parts = path.split("::")
    base = list(here)
    if parts[0] == "crate":
        base, parts = [], parts[1:]
    else:
        # In a non-mod file `self` is the file's module; in mod.rs as well.
        while parts and parts[0] in ("super", "self"):
            if parts[0] == "super":
                base = base[:-1]
            parts = parts[1:]
    full = base + parts
    for k in range(len(full), -1, -1):
        f = files.get(tuple(full[:k]))
        if f:
            return f
    return None


def main():
    report = "--report" in sys.argv[1:]
    files, texts = {}, {}
    for d, _, names in os.walk(ROOT):
        for name in names:
            if name.endswith(".rs"):
                rel = os.path.relpath(os.path.join(d, name), ROOT)
                mod = module_of(rel)
                if mod is not None:
                    files[tuple(mod)] = rel
                with open(os.path.join(ROOT, rel), encoding="utf-8") as fh:
                    texts[rel] = fh.read()
    problems = []

    # Imports between files.
    edges = {rel: set() for rel in texts}
    for rel, text in texts.items():
        mod = module_of(rel)
        if mod is None:
            continue
        code = strip(text)
        for p in targets(code):
            g = resolve(p, mod, rel.endswith("mod.rs"), files)
            if g and g != rel:
                edges[rel].add(g)

    def parent_child(a, b):
        ma, mb = module_of(a), module_of(b)
        return bool(ma) and bool(mb) and (mb == ma[:-1] or ma == mb[:-1])

    graph = {a: {b for b in bs if not parent_child(a, b)} for a, bs in edges.items()}
    # Tarjan's strongly connected components.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    for comp in sccs:
        ties = [f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp]
        problems.append(f"circle: {', '.join('src/' + c for c in comp)} ({'; '.join(ties)})")

    # Pipeline order of the stages declared in lib.rs.
    order = re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", strip(texts["lib.rs"]), re.M)
    rank = {m: k for k, m in enumerate(order)}
    for a, bs in sorted(edges.items()):
        ma = module_of(a)
        if not ma or ma[0] not in rank:
            continue
        for b in sorted(bs):
            mb = module_of(b)
            if mb and mb[0] in rank and rank[mb[0]] > rank[ma[0]]:
                problems.append(f"order: src/{a} ({ma[0]}) uses src/{b} ({mb[0]}), a later stage")

    # Long files, unsafe, Result<_, String>.
    unsafe_files, string_results = [], []
    for rel, text in sorted(texts.items()):
        before = text.split("#[cfg(test)]")[0].count("\n")
        if before > MAX_LINES:
            problems.append(f"long: src/{rel} has {before} lines before its tests (at most {MAX_LINES})")
        code = strip(text)
        if re.search(r"\bunsafe\s*(\{|fn\b|impl\b|extern\b)|allow\(unsafe_code\)", code):
            unsafe_files.append(rel)
        for m in re.finditer(r"\bResult<[^;{}]*?,\s*String\s*>", code):
            line = code.count("\n", 0, m.start()) + 1
            string_results.append(f"src/{rel}:{line}")
    if len(unsafe_files) > MAX_UNSAFE_FILES:
        problems.append(f"unsafe: {len(unsafe_files)} files hold unsafe code (at most {MAX_UNSAFE_FILES}): "
                        + ", ".join("src/" + f for f in unsafe_files))
    if len(string_results) > MAX_STRING_RESULTS:
        problems.append(f"errors: {len(string_results)} Result<_, String> (at most {MAX_STRING_RESULTS}): "
                        + ", ".join(string_results))

    longest = max(texts, key=lambda r: texts[r].split("#[cfg(test)]")[0].count("\n"))
    print(f"structure: {len(texts)} files, {len(sccs)} circles, longest src/{longest} "
          f"({texts[longest].split('#[cfg(test)]')[0].count(chr(10))} lines before tests), "
          f"unsafe in {len(unsafe_files)} files, {len(string_results)} Result<_, String>")
    for p in problems:
        print(p)
    return 0 if report or not problems else 1


if __name__ == "__main__":
    sys.exit(main())
