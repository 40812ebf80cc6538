#!/usr/bin/env python3
# Which tokens each attention head of a Torus model reads, on one held-out RAG question: for
# every value token of the documents (a fact's last word) and for the answer position that
# predicts the asked value, the top positions each head of each layer attends to (token,
# offset, weight). Shows at which layer the answer is copied and whether the keys it matches
# carry the person's name (the diagnosis of issue #11's note). Needs torch and transformers
# (a venv outside the repository); the model directory is read as Hugging Face writes it.
#   torus data synth --kind rag --seed 11 --train 1 --heldout 100 --documents 2-3 --no-filler --out /tmp/rag
#   python3 bench/rag-attention.py runs/rag-pretrain/model /tmp/rag/heldout.jsonl [INDEX] [KIND]
# KIND (default single): friend or previous shows the answer position that predicts the linked
# name ("Venu is a friend of" -> "Lufo") instead of the asked value.
import json, sys
try:
    import torch
    from transformers import LlamaForCausalLM
    from tokenizers import Tokenizer
except ImportError as e:
    sys.exit(f'rag-attention: needs torch, transformers and tokenizers ({e})')
model_dir, path = sys.argv[1], sys.argv[2]
index = int(sys.argv[3]) if len(sys.argv) > 3 else 0
kind = sys.argv[4] if len(sys.argv) > 4 else 'single'
examples = [json.loads(l) for l in open(path)]
chosen = [e for e in examples if e['kind'] == kind]
if not chosen:
    sys.exit(f'rag-attention: {path} holds no question of kind {kind!r} (single, friend, previous)')
e = chosen[index % len(chosen)]
# A two-document answer's first sentence is the link; its last word is the linked name.
value = e['value'] if kind == 'single' else e['answer'].split('. ')[0].rstrip('.').split(' ')[-1]
torch.set_num_threads(1)
model = LlamaForCausalLM.from_pretrained(model_dir, attn_implementation='eager').eval()
tokenizer = Tokenizer.from_file(f'{model_dir}/tokenizer.json')
prompt = ''.join(e['documents']) + e['question']
encoding = tokenizer.encode(prompt + ' ' + e['answer'])
ids, tokens = encoding.ids, encoding.tokens
with torch.no_grad():
    attentions = model(input_ids=torch.tensor([ids]), output_attentions=True).attentions
value_token = tokenizer.encode(' ' + value).tokens[0]
prompt_length = len(tokenizer.encode(prompt).ids)

def show(position, label):
    print(f'{label}: position {position} {tokens[position]!r}')
    for layer, a in enumerate(attentions):
        for head in range(a.shape[1]):
            top = torch.topk(a[0, head, position], min(4, position + 1))
            reads = ', '.join(f'{tokens[j]}@{j - position}:{w:.2f}' for w, j in zip(top.values.tolist(), top.indices.tolist()))
            print(f'  layer {layer} head {head}: {reads}')

print(f'question: {e["question"]!r}  answer: {e["answer"]!r}')
answer_value = next(i for i in range(prompt_length, len(tokens)) if tokens[i] == value_token)
# The same kind of fact in every document: the two tokens before the value match ("keeps a").
before = tokens[answer_value - 2:answer_value]
for i in range(2, prompt_length):
    if tokens[i - 2:i] == before:
        show(i, 'document value')
show(answer_value - 1, 'answer position predicting the value')
