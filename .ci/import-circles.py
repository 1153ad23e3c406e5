#!/usr/bin/env python3
"""fleetnix's import-circle check (issue 20): the import graph of src/ read as text, files as nodes and
`crate::`/`super::`/`self::` paths as edges (a path names the longest module prefix that is a file).
Fails (exit 1) on any circle between files, in one folder or across folders, and on any circle between
top-level modules: data flows one way through the pipeline (manifest -> spec -> outputs/acl/secrets ->
executors), and a lower stage never imports a higher one. A folder's mod.rs re-exporting its children
(`pub use child::…`) is how a folder shows its API and is not counted.
Usage: python3 .ci/import-circles.py [src]"""
import os, re, sys
from itertools import count

root = sys.argv[1] if len(sys.argv) > 1 else 'src'
files = {}
for d, _, fs in os.walk(root):
    for f in fs:
        if f.endswith('.rs'):
            p = os.path.relpath(os.path.join(d, f), root)
            files[p] = open(os.path.join(d, f), encoding='utf-8', errors='replace').read()

def mod_path(p):  # src-relative file -> module path list
    parts = p[:-3].split('/')
    if parts[-1] in ('mod', 'lib', 'main'): parts = parts[:-1]
    return parts

by_mod = {tuple(mod_path(p)): p for p in files}

def resolve(parts):  # longest module prefix that is a file
    for k in range(len(parts), 0, -1):
        if tuple(parts[:k]) in by_mod: return by_mod[tuple(parts[:k])]
    return None

edges = {p: set() for p in files}
pat = re.compile(r'\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)')
usegrp = re.compile(r'\buse\s+(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\};', re.S)
for p, text in files.items():
    text = re.sub(r'//[^\n]*', '', text)
    text = re.sub(r'#\[cfg\(test\)\]\s*mod\s+tests\s*\{.*', '', text, flags=re.S)  # unit tests at the end
    me = mod_path(p)
    is_mod_file = p.endswith('mod.rs') or p in ('lib.rs', 'main.rs')
    here = me if is_mod_file else me[:-1]  # `super` of a file module is its folder's module
    def base(kind):
        if kind == 'crate': return []
        if kind == 'self': return list(me)
        return list(here if not is_mod_file else me[:-1])
    targets = []
    for m in usegrp.finditer(text):
        pre = base(m.group(1)) + [x for x in m.group(2).split('::') if x]
        for item in re.split(r',', m.group(3)):
            item = item.strip().split(' as ')[0].strip()
            if not item or item.startswith('{'): continue
            targets.append(pre + [x for x in item.split('::') if x and x != 'self'])
    for m in pat.finditer(text):
        targets.append(base(m.group(1)) + [x for x in m.group(2).split('::') if x])
    for t in targets:
        q = resolve(t)
        if q and q != p: edges[p].add(q)

def sccs(nodes, adj):
    idx, low, st, on, out, c = {}, {}, [], set(), [], count()
    def strong(v):
        idx[v] = low[v] = next(c); st.append(v); on.add(v)
        for w in adj.get(v, ()):
            if w not in idx: strong(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: out.append(sorted(comp))
    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in idx: strong(v)
    return out

top = lambda p: mod_path(p)[0] if mod_path(p) else 'lib'
circles = sccs(sorted(files), edges)
tadj = {}
for p, qs in edges.items():
    for q in qs:
        if top(p) != top(q): tadj.setdefault(top(p), set()).add(top(q))
tops = sccs(sorted({top(p) for p in files}), tadj)
for c in circles: print('file circle:', ' '.join(c))
for c in tops: print('top-level circle:', ' '.join(c))
print(f'file circles: {len(circles)}; top-level circles: {len(tops)}')
sys.exit(1 if circles or tops else 0)
