#!/usr/bin/env python3
# How many steps, at which batch size, the default model's shape (transformers' LlamaForCausalLM,
# d=128, 4 layers, 2 heads of 64 sharing 1 key/value head, tied embeddings, std 0.06, AdamW
# lr 1e-3, betas 0.9/0.95, weight decay 0.1, clipping 1.0) needs before it binds a value to its
# name in context: the step the RAG questions of issue #11 stand on. Two tasks, both with
# 1..PAIRS pairs per example (at least NDMIN) and as many queries, drawn with replacement (so no
# answer follows by elimination); loss on the answers only; `acc` is the accuracy on the value
# token of each answer (the only token that needs the binding).
#   mqar:  abstract tokens, "n1 v1 . n2 v2 . Q n_i v_i ..." (Zoology's associative recall).
#   drill: the RAG corpus's words and tokenizer, one fact a document, all facts of one kind:
#          "Doc: Poti keeps a goat.\nDoc: Kibi keeps a dog.\nQ: What pet does Poti keep?\nA: Poti keeps a goat.\n"
#          ADJ=1 states facts as "Poti goat." (name next to value); ADJ2=1 also drops the question.
# FACT='{n} has a {v}.' states every fact so (the words between name and value are the gap);
# ANSWER='{n} {v}.' answers in another form than the documents state.
# REALTOK=1 runs mqar in the corpus's name and value tokens; SAVE=F writes the weights at the
# end and LOAD=F starts from them.
# Without binding, accuracy stays at the share a model reaches knowing only which values the
# example holds (PAIRS=2, NDMIN=1: 0.67-0.70); with it, it goes to 1.
# Measured (AMD EPYC Zen 4, one thread each; issue #11's notes):
#   B=256 STEPS=800 PAIRS=2  python3 bench/binding-probe.py    binds at step ~450 (acc 0.95 at 500)
#   B=64  STEPS=1500 PAIRS=2 python3 bench/binding-probe.py    binds at step ~850 (0.96 at 1000)
#   B=32  STEPS=1500 PAIRS=2 python3 bench/binding-probe.py    not within 1500 steps (0.67)
#   TASK=drill NDMIN=1 B=64 (and ADJ=1 ADJ2=1)                 not within 1000-1100 steps (0.69-0.70)
# A curriculum that binds the corpus's own sentences (each step from the weights of the one before):
#   TASK=mqar REALTOK=1 B=256 STEPS=700 SAVE=m.pt                                   binds at ~500
#   TASK=drill ADJ2=1 FACT='{n} has {v}.' ANSWER='{n} {v}.' STEPS=900 LOAD=m.pt SAVE=g1.pt          at ~700 (0.98 at 900)
#   TASK=drill ADJ2=1 FACT='{n} keeps a {v}.' ANSWER='{n} {v}.' STEPS=1000 LOAD=g1.pt SAVE=g2.pt    0.98 at 200
#   TASK=drill STEPS=500 LOAD=g2.pt                        the corpus's questions and answers: 0.80 / 0.91 / 0.95 at 300 / 400 / 500
# Torus runs this curriculum (and a statements stage between two words and the questions) as
# configs/rag-curriculum/ (`data.train: synth_drill`), the first six runs of ./launch/train-default.
# Skipping a step fails: the gapped statements from the MQAR weights with the statement as the
# answer, or two words between from the MQAR weights, or the corpus's sentences from scratch,
# stay at 0.70 through 1100-1500 steps.
# Needs torch, transformers and tokenizers, in a venv outside the repository.
import math, os, random, re, sys, time
try:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from tokenizers import Tokenizer
except ImportError as e:
    sys.exit(f'binding-probe: needs torch, transformers and tokenizers ({e})')
E = os.environ.get
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
torch.set_num_threads(int(E('THREADS', 1)))
task = E('TASK', 'mqar')
steps, B, lr = int(E('STEPS', 1500)), int(E('B', 64)), float(E('LR', 1e-3))
pairs, ndmin = int(E('PAIRS', 2)), int(E('NDMIN', 1))
seed = int(E('SEED', 0))
torch.manual_seed(seed)
rng = random.Random(seed)
VOCAB = 1408

tok = Tokenizer.from_file(os.path.join(ROOT, 'configs', 'rag-tokenizer.json'))
vocab = tok.get_vocab()
# The corpus's 400 names: the tokenizer holds each as one token.
POOL = sorted(w[1:] for w in vocab if re.fullmatch(r'Ġ[BDFGKLMNPRSTVZ][aeiou][bdfgklmnprstvz][aeiou]', w))
CITIES = 'Tarsa Molvik Queren Adlo Bexhal Corin Dunmar Elsby Fenwick Galto Hollin Istra Jorvale Kesh Lunde Marrow'.split()
COLORS = 'red green blue amber violet silver olive teal ochre white crimson grey'.split()
JOBS = 'baker pilot tailor judge miner farmer poet smith nurse clerk sailor mason'.split()
PETS = 'cat dog parrot goat horse rabbit owl tortoise'.split()

if task == 'mqar':
    NAMES, VALUES, SEP, Q = list(range(100, 500)), list(range(600, 648)), 5, 6
    if E('REALTOK'):  # the corpus's name and value tokens, '.' and 'Q'
        NAMES = [vocab['Ġ' + n] for n in POOL]
        VALUES = [vocab['Ġ' + v] for v in CITIES + COLORS + JOBS + PETS]
        SEP, Q = vocab['.'], vocab['Q']

    def example():
        k = rng.randint(ndmin, pairs)
        names = rng.sample(NAMES, k)
        vals = [rng.choice(VALUES) for _ in names]
        ids, mask = [], []
        for n, v in zip(names, vals):
            ids += [n, v, SEP]
            mask += [0, 0, 0]
        ids.append(Q)
        mask.append(0)
        for _ in range(k):
            i = rng.randrange(k)
            ids += [names[i], vals[i]]
            mask += [0, 2]
        return ids, mask
elif task == 'drill':
    FACTS = [('Where does {n} live?', '{n} lives in {v}.', CITIES), ('What does {n} work as?', '{n} works as a {v}.', JOBS),
             ('What color does {n} like?', '{n} likes the color {v}.', COLORS), ('What pet does {n} keep?', '{n} keeps a {v}.', PETS)]
    if E('ADJ'):
        FACTS = [('{n}?', '{n} {v}.', values) for _, _, values in FACTS]
    if E('FACT'):  # statements for every kind, e.g. '{n} has {v}.' (one word between name and value);
        # several separated by '|' are drawn at random per example
        FACTS = [(question, E('FACT').split('|'), values) for question, _, values in FACTS]
    cache = {}

    def enc(text):
        if text not in cache:
            cache[text] = tok.encode(text).ids
        return cache[text]

    def example():
        k = rng.randint(ndmin, pairs)
        kind = rng.randrange(4)
        question, fact, values = FACTS[kind]
        if isinstance(fact, list):
            fact = rng.choice(fact)
        docs = [(n, rng.choice(values)) for n in rng.sample(POOL, k)]
        ids = [i for n, v in docs for i in enc('Doc: ' + fact.format(n=n, v=v) + '\n')]
        mask = [0] * len(ids)
        for _ in range(k):
            n, v = rng.choice(docs)
            q = enc('Q:') if E('ADJ2') else enc('Q: ' + question.format(n=n) + '\nA:')
            a = enc(' ' + E('ANSWER', fact).format(n=n, v=v) + '\n')
            at = a.index(enc(' ' + v)[0])
            ids += q + a
            mask += [0] * len(q) + [2 if i == at else 1 for i in range(len(a))]
        return ids, mask
else:
    sys.exit(f'binding-probe: TASK {task}: expected mqar or drill')


def batch():
    xs, ms = zip(*[example() for _ in range(B)])
    width = max(map(len, xs))
    x = torch.zeros(B, width, dtype=torch.long)
    m = torch.zeros(B, width)
    for i, (a, b) in enumerate(zip(xs, ms)):
        x[i, :len(a)] = torch.tensor(a)
        m[i, :len(b)] = torch.tensor(b, dtype=torch.float)
    return x, m


config = LlamaConfig(hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
                     vocab_size=VOCAB, max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-5,
                     tie_word_embeddings=True, initializer_range=0.06)
model = LlamaForCausalLM(config)
if E('LOAD'):  # weights SAVE wrote (a curriculum: one task, then another)
    model.load_state_dict(torch.load(E('LOAD')))
decay = [p for p in model.parameters() if p.dim() >= 2]
rest = [p for p in model.parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.1}, {'params': rest, 'weight_decay': 0.0}], lr=lr, betas=(0.9, 0.95))
print(f'binding-probe: task {task}, batch {B}, {ndmin}..{pairs} pairs, lr {lr}, {steps} steps', flush=True)
t0 = time.time()
loss_sum = acc_sum = 0.0
for s in range(1, steps + 1):
    x, m = batch()
    for g in opt.param_groups:
        g['lr'] = lr * min(1, s / 30)
    logits = model(x).logits[:, :-1]
    target, mm = x[:, 1:], m[:, 1:]
    per = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1), reduction='none').view_as(mm)
    weight = (mm > 0).float()
    loss = (per * weight).sum() / weight.sum()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
        value = (mm == 2).float()
        acc = ((logits.argmax(-1) == target).float() * value).sum() / value.sum()
    loss_sum += loss.item()
    acc_sum += acc.item()
    if s % 100 == 0:
        print(f'step {s} loss {loss_sum / 100:.3f} value accuracy {acc_sum / 100:.3f} {time.time() - t0:.0f}s', flush=True)
        loss_sum = acc_sum = 0.0
if E('SAVE'):
    torch.save(model.state_dict(), E('SAVE'))
