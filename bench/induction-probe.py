#!/usr/bin/env python3
# Whether a training recipe forms in-context copying by name (an induction circuit) within a
# token budget: the smallest form of what the RAG questions of issue #11 need. Each 256-token
# window lists 6-12 (name, value) pairs of the RAG corpus's vocabulary ("Poti goat. Kemi Galto.")
# and then lists the same pairs again and again in shuffled order, so after the first listing
# every value follows from the name just before it. Ideal loss per token on the held-out windows
# (computed from their structure): 3.18 nats using no context, 1.57 knowing which names and
# values the window holds but not whose, 0.75 copying each value by its name. `score` splits a
# trained model's held-out loss by token role; the figure that matters is the loss on values
# after the first listing, printed next to the level of a model that only knows the window's
# values (the mean of ln(distinct values in the window)) and 0 for one that copies by name.
# Needs tokenizers (write) and torch + transformers
# (score), in a venv outside the repository.
#   python3 bench/induction-probe.py write /tmp/probe        (train.tokens, heldout.tokens, probe.yaml)
#   mpirun -np 2 torus train --config /tmp/probe/probe.yaml
#   python3 bench/induction-probe.py score /tmp/probe/out/model /tmp/probe
#   python3 bench/induction-probe.py torch /tmp/probe 1500     (the PyTorch twin: transformers' LlamaForCausalLM of the
#       same config, AdamW, schedule and clipping, on the same windows, into /tmp/probe/torch-model; then score that)
import math, os, random, re, struct, sys, time
try:
    from tokenizers import Tokenizer
except ImportError as e:
    sys.exit(f'induction-probe: needs tokenizers ({e})')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(ROOT, 'configs', 'rag-tokenizer.json')
WINDOW = 256
# The value words of Sources/TorusTrain/RAGCorpus.swift.
CITIES = ['Tarsa', 'Molvik', 'Queren', 'Adlo', 'Bexhal', 'Corin', 'Dunmar', 'Elsby', 'Fenwick', 'Galto', 'Hollin', 'Istra',
          'Jorvale', 'Kesh', 'Lunde', 'Marrow']
VALUES = CITIES + ['red', 'green', 'blue', 'amber', 'violet', 'silver', 'olive', 'teal', 'ochre', 'white', 'crimson', 'grey',
                   'baker', 'pilot', 'tailor', 'judge', 'miner', 'farmer', 'poet', 'smith', 'nurse', 'clerk', 'sailor', 'mason',
                   'cat', 'dog', 'parrot', 'goat', 'horse', 'rabbit', 'owl', 'tortoise']
# The default RAG model's shape (configs/rag-pretrain.yaml), for Torus's config and the PyTorch twin alike.
MODEL = dict(hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
             vocab_size=1408, max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
             initializer_range=0.06)
CONFIG = """# Induction probe (bench/induction-probe.py): the default RAG model's shape, learning rate 1e-3.
model:
""" + ''.join(f'  {k}: {str(v).lower() if isinstance(v, bool) else v}\n' for k, v in MODEL.items()) + """seed: 11
train:
  steps: 1500
  batch_size: 16
  seq_len: 256
  lr: 1.0e-3
  min_lr: 1.0e-4
  warmup_steps: 30
  log_every: 50
  out: {out}
data:
  train: {train}
  heldout: {heldout}
"""


def windows(tokenizer, count, seed):
    # Names: the single-token capitalised four-letter words of the tokenizer (the corpus's name pool).
    names = sorted(w[1:] for w in tokenizer.get_vocab() if re.fullmatch('\u0120[A-Z][a-z]{3}', w)
                   and w[1:] not in CITIES + ['What', 'Where'])
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        k = rng.randint(6, 12)
        pairs = list(zip(rng.sample(names, k), [rng.choice(VALUES) for _ in range(k)]))
        ids = []
        while len(ids) < WINDOW:
            rng.shuffle(pairs)
            ids += tokenizer.encode(''.join(f' {n} {v}.' for n, v in pairs) + '\n').ids
        out += ids[:WINDOW]
    return out, len(names)


def write_tokens(path, ids):
    # Torus token file: magic, version 1, width 2, count, then the tokens (Sources/TorusModel/TokenFile.swift).
    with open(path, 'wb') as f:
        f.write(b'TORUSTOK' + struct.pack('<IIQ', 1, 2, len(ids)) + struct.pack(f'<{len(ids)}H', *ids))


def read_tokens(path):
    data = open(path, 'rb').read()
    if data[:8] != b'TORUSTOK' or struct.unpack('<I', data[12:16])[0] != 2:
        sys.exit(f'induction-probe: {path} is not a 2-byte Torus token file')
    n = struct.unpack('<Q', data[16:24])[0]
    return list(struct.unpack(f'<{n}H', data[24:24 + 2 * n]))


def write(directory):
    tokenizer = Tokenizer.from_file(TOKENIZER)
    os.makedirs(directory, exist_ok=True)
    train, names = windows(tokenizer, 20000, 1)
    heldout, _ = windows(tokenizer, 50, 2)
    write_tokens(os.path.join(directory, 'train.tokens'), train)
    write_tokens(os.path.join(directory, 'heldout.tokens'), heldout)
    with open(os.path.join(directory, 'probe.yaml'), 'w') as f:
        f.write(CONFIG.format(out=os.path.join(directory, 'out'), train=os.path.join(directory, 'train.tokens'),
                              heldout=os.path.join(directory, 'heldout.tokens')))
    print(f'induction-probe: {len(train) // WINDOW} training and {len(heldout) // WINDOW} held-out windows of {WINDOW} tokens '
          f'({names} names, {len(VALUES)} values) in {directory}; config {directory}/probe.yaml')


def score(model_dir, directory):
    try:
        import torch
        from transformers import LlamaForCausalLM
    except ImportError as e:
        sys.exit(f'induction-probe: score needs torch and transformers ({e})')
    tokenizer = Tokenizer.from_file(TOKENIZER)
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    ids = read_tokens(os.path.join(directory, 'heldout.tokens'))
    dot, newline = tokenizer.encode('.').ids[0], tokenizer.encode('\n').ids[0]
    losses = {'value, first listing': [], 'value, later listings': [], 'name, later listings': []}
    bag = []  # per later value: ln(distinct values of its window), the loss of knowing them but not whose
    for start in range(0, len(ids) - WINDOW + 1, WINDOW):
        window = ids[start:start + WINDOW]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([window])).logits[0], -1)
        later, distinct = False, set()
        for i in range(1, WINDOW - 1):
            later = later or window[i - 1] == newline
            loss = -logp[i - 1, window[i]].item()
            if window[i + 1] == dot:
                losses['value, later listings' if later else 'value, first listing'].append(loss)
                if later:
                    bag.append(math.log(len(distinct)))
                else:
                    distinct.add(window[i])
            elif later and i + 2 < WINDOW and window[i + 2] == dot:
                losses['name, later listings'].append(loss)
    for role, values in losses.items():
        mean = sum(values) / len(values)
        print(f'{role}: {mean:.3f} nats per token (perplexity {math.exp(mean):.1f}) over {len(values)} tokens')
    print(f'reference for later values: {sum(bag) / len(bag):.3f} nats knowing only which values the window holds, 0 copying by name')


def torch_twin(directory, steps):
    # The probe config trained by PyTorch: whether a plateau is Torus's or the recipe's.
    try:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as e:
        sys.exit(f'induction-probe: torch needs torch and transformers ({e})')
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get('TORUS_TORCH_THREADS', '2')))
    tokens = torch.tensor(read_tokens(os.path.join(directory, 'train.tokens')), dtype=torch.long)
    config = LlamaConfig(**MODEL)
    model = LlamaForCausalLM(config)
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    peak, low, warmup, batch = 1e-3, 1e-4, 30, 16
    optimizer = torch.optim.AdamW([{'params': matrices, 'weight_decay': 0.1}, {'params': vectors, 'weight_decay': 0.0}],
                                  lr=peak, betas=(0.9, 0.95), eps=1e-8)
    windows = (len(tokens) - 1) // WINDOW
    generator = torch.Generator().manual_seed(11)
    started, running = time.time(), 0.0
    for step in range(1, steps + 1):
        # Torus's schedule: linear warm-up, cosine to the minimum.
        progress = min(1, (step - warmup) / max(1, steps - warmup))
        rate = peak * step / warmup if step <= warmup else low + 0.5 * (peak - low) * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group['lr'] = rate
        starts = torch.randint(0, windows, (batch,), generator=generator) * WINDOW
        x = torch.stack([tokens[i:i + WINDOW] for i in starts])
        y = torch.stack([tokens[i + 1:i + WINDOW + 1] for i in starts])
        loss = torch.nn.functional.cross_entropy(model(x).logits.view(-1, config.vocab_size), y.view(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running += loss.item()
        if step % 50 == 0:
            elapsed = time.time() - started
            print(f'step {step}: loss {running / 50:.3f} (mean of 50), {step * batch * WINDOW / elapsed:.0f} tokens/s', flush=True)
            running = 0.0
    out = os.path.join(directory, 'torch-model')
    model.save_pretrained(out)
    print(f'induction-probe: wrote {out}; score it with: induction-probe.py score {out} {directory}')


if len(sys.argv) == 4 and sys.argv[1] == 'torch':
    torch_twin(sys.argv[2], int(sys.argv[3]))
elif len(sys.argv) == 3 and sys.argv[1] == 'write':
    write(sys.argv[2])
elif len(sys.argv) == 4 and sys.argv[1] == 'score':
    score(sys.argv[2], sys.argv[3])
else:
    sys.exit('usage: induction-probe.py write DIR | score MODEL_DIR DIR | torch DIR STEPS')
