#!/usr/bin/env python3
# Where a model's wrong RAG answers come from: answers each held-out question greedily with
# `torus generate` and, for each wrong answer, checks whether its value (the last word of the
# answer line) stands in one of the prompt's documents (copied from the wrong document) or not
# (guessed). Prints right / wrong-in-documents / wrong-not-in-documents per question kind, and for
# two-document questions whether the wrong answer's first sentence (the link: "Venu is a friend of
# Lufo.") is already wrong or only the fact copied after it.
#   torus data synth --kind rag --seed 11 --train 1 --heldout 100 --out /tmp/rag
#   python3 bench/rag-errors.py runs/rag-default/model /tmp/rag/heldout.jsonl [TORUS_BINARY]
import json, os, subprocess, sys, collections
model, path = sys.argv[1], sys.argv[2]
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B = sys.argv[3] if len(sys.argv) > 3 else subprocess.run(['swift', 'build', '-c', 'release', '--show-bin-path'], cwd=root,
                                                         capture_output=True, text=True, check=True).stdout.strip() + '/torus'
c = collections.Counter()
for l in open(path):
    e = json.loads(l)
    docs = ''.join(e['documents'])
    out = subprocess.run([B, 'generate', '--model', model, '--prompt', docs + e['question'], '--max-tokens', '24'], capture_output=True, text=True).stdout
    got = out.split('\n')[0].strip()
    k = e['kind']
    c[k, 'total'] += 1
    if got == e['answer']: c[k, 'right'] += 1; continue
    if k != 'single':
        c[k, 'wrong link' if got.split('. ')[0] != e['answer'].split('. ')[0] else 'right link, wrong fact'] += 1
    value = got.rstrip('.').split(' ')[-1] if got else ''
    c[k, 'wrong value in documents' if value and (' ' + value + '.') in docs else 'wrong value not in documents'] += 1
for k in ['single', 'friend', 'previous']:
    names = ['total', 'right', 'wrong value in documents', 'wrong value not in documents'] + (['wrong link', 'right link, wrong fact'] if k != 'single' else [])
    print(k, {n: c[k, n] for n in names})
