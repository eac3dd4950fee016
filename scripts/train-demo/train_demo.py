#!/usr/bin/env python3
"""Train Puna's bundled demo: a small LLaMA on Debian's fortune-cookie files, and a LoRA adapter that
teaches it to answer in the Guanaco format. See scripts/train-demo/README.md.

    .venv-fixtures/bin/python scripts/train-demo/train_demo.py all      # data, base, adapter, export

Stages (each reads what the previous one wrote under --work, default .cache/demo-work/):
  data     corpus from /usr/share/games/fortunes (apt-get install fortunes fortunes-min), the held-out
           split, question/answer pairs, the SentencePiece tokenizer
  base     LlamaForCausalLM trained from scratch (checkpoints; an interrupted run resumes)
  adapter  PEFT LoRA on the question/answer pairs in the Guanaco template
  export   GGUF files via llama.cpp's converters and llama-quantize, the PEFT folder, the unigram
           baseline, reference perplexities and format-following rates, models/demo/metrics.json

Everything is seeded and runs on one CPU thread (torch.use_deterministic_algorithms), so a rerun on the
same machine and versions reproduces the weights.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "models/demo"
FORTUNES = Path("/usr/share/games/fortunes")
SEED = 20251123
NAME = "fortune-llama"

# Fortune files left out: pictures drawn with characters (not prose), a file of untranslated quotes in
# other languages, and two files of jokes built on stereotypes of groups that a demo should not repeat.
SKIPPED_FILES = {"ascii-art", "translate-me", "ethnic", "men-women"}
HELDOUT_MODULUS = 20  # a fortune is held out when its sha256 is 0 modulo this: about 5%

VOCAB_SIZE = 3072
MODEL = dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
             intermediate_size=768, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
             max_position_embeddings=512)
CTX = 256            # training sequence length = the perplexity context (-c 256)
BASE = dict(batch=12, steps=600, lr=2e-3, min_lr=2e-4, warmup=50, weight_decay=0.1, checkpoint_every=50)

QA_PER_KIND = 140    # four kinds of question -> 560 pairs
QA_HELDOUT = 60
LORA = dict(r=8, alpha=16, targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
ADAPTER = dict(batch=16, epochs=8, lr=1e-3, warmup=20)
ANSWER_TOKENS = 64   # generation budget when checking the answer format


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


def run(cmd, **kw):
    log("+", " ".join(str(c) for c in cmd))
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def write_json(path: Path, obj):
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def setup_torch():
    torch.set_num_threads(1)  # the machine is shared; one thread also keeps the run deterministic
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)


# ------------------------------------------------------------------------------------------------ data

def read_fortunes() -> list[tuple[str, str]]:
    """(file name, fortune text) for every fortune, each flattened onto one line: lines stripped and
    joined by single spaces, so a tab-indented "-- Author" line becomes " -- Author" at the end."""
    if not FORTUNES.is_dir():
        raise SystemExit(f"{FORTUNES} missing: apt-get install fortunes fortunes-min")
    entries = []
    for path in sorted(FORTUNES.iterdir()):
        if path.suffix in (".dat", ".u8") or path.is_symlink() or not path.is_file() or path.name in SKIPPED_FILES:
            continue
        text = path.read_text(encoding="utf-8")
        # Some fortunes underline or embolden with nroff overstrikes ("_\bW"): keep the printed character.
        text = re.sub(r".\x08", "", text).replace("\x08", "")
        text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)
        for block in re.split(r"^%\n", text, flags=re.M):
            flat = " ".join(line.strip() for line in block.split("\n") if line.strip())
            flat = re.sub(r"\s+", " ", flat).strip()
            if len(flat) >= 10:
                entries.append((path.name, flat))
    seen, unique = set(), []
    for name, flat in entries:
        if flat not in seen:
            seen.add(flat)
            unique.append((name, flat))
    return unique


def is_heldout(text: str) -> bool:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) % HELDOUT_MODULUS == 0


ATTRIBUTION = re.compile(r"^(?P<quote>.+?) -- (?P<author>[A-Z][A-Za-z.' -]{2,40})$")
WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")


def words_of(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def make_qa_pairs(fortunes: list[tuple[str, str]], rng: random.Random) -> list[dict]:
    """Question/answer pairs about the training fortunes, four kinds, QA_PER_KIND of each:
    who said a quote, how a saying ends, a fortune about a word, and which file a fortune is from."""
    attributed, sayings, short = [], [], []
    for name, text in fortunes:
        m = ATTRIBUTION.match(text)
        if m and 20 <= len(m["quote"]) <= 160 and "--" not in m["quote"]:
            attributed.append((name, m["quote"].strip(), m["author"].strip().rstrip(".")))
        n = len(text.split())
        if not m and 8 <= n <= 24:
            sayings.append((name, text))
        if 20 <= len(text) <= 140:
            short.append((name, text))
    counts = collections.Counter(w for _, t in fortunes for w in set(words_of(t)))
    pairs = []

    for name, quote, author in rng.sample(attributed, QA_PER_KIND):
        pairs.append({"kind": "who", "q": f'Who said "{quote}"?', "a": f"{author} said that."})
    for name, text in rng.sample(sayings, QA_PER_KIND):
        w = text.split()
        cut = len(w) // 2
        pairs.append({"kind": "complete", "q": "Complete this saying: " + " ".join(w[:cut]),
                      "a": "... " + " ".join(w[cut:])})
    pool = rng.sample(short, len(short))
    used = 0
    for name, text in pool:
        # A topic word: a word of 5+ letters that is not too common, so it names what the fortune is about.
        candidates = [w for w in dict.fromkeys(words_of(text)) if len(w) >= 5 and 3 <= counts[w] <= 200]
        if not candidates:
            continue
        word = rng.choice(candidates)
        pairs.append({"kind": "about", "q": f"Tell me a fortune about {word}.", "a": text})
        used += 1
        if used == QA_PER_KIND:
            break
    for name, text in rng.sample(short, QA_PER_KIND):
        pairs.append({"kind": "file", "q": f"Which fortune file is this from: {text}",
                      "a": f"It is from the {name} file."})
    rng.shuffle(pairs)
    return pairs


def guanaco_prompt(question: str) -> str:
    """Exactly what `puna run --template guanaco -p QUESTION` renders (PromptTemplate.guanaco)."""
    return "### Human: " + question + " ### Assistant:"


def train_tokenizer(work: Path, text_path: Path) -> Path:
    prefix = work / "tokenizer"
    spm.set_random_generator_seed(SEED)
    # LLaMA's settings (BPE, byte fallback, split digits, dummy prefix, identity normalization),
    # ids 0/1/2 = <unk>/<s>/</s>, no pad.
    spm.SentencePieceTrainer.train(
        input=str(text_path), model_prefix=str(prefix), model_type="bpe", vocab_size=VOCAB_SIZE,
        byte_fallback=True, split_digits=True, split_by_unicode_script=True, split_by_whitespace=True,
        split_by_number=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", max_sentencepiece_length=16, character_coverage=0.9995,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, shuffle_input_sentence=False, input_sentence_size=0,
        num_threads=1, minloglevel=2)
    return prefix.with_suffix(".model")


def stage_data(args):
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    fortunes = read_fortunes()
    train = [(n, t) for n, t in fortunes if not is_heldout(t)]
    heldout = [(n, t) for n, t in fortunes if is_heldout(t)]
    rng = random.Random(SEED)
    order = list(range(len(train)))
    rng.shuffle(order)
    # One fortune per line; the shuffled order mixes the files so every training window sees all of them.
    (work / "train.txt").write_text("\n".join(train[i][1] for i in order) + "\n")
    (OUT / "heldout.txt").write_text("\n".join(t for _, t in heldout) + "\n")

    pairs = make_qa_pairs(train, random.Random(SEED + 1))
    qa_train, qa_heldout = pairs[QA_HELDOUT:], pairs[:QA_HELDOUT]
    with open(work / "qa-train.jsonl", "w") as f:
        for p in qa_train:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    with open(OUT / "qa-heldout.jsonl", "w") as f:
        for p in qa_heldout:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")

    # Words of the training text seen at least twice: what "readable words" means in the tests.
    counts = collections.Counter(w for _, t in train for w in words_of(t))
    vocab = sorted(w for w, c in counts.items() if c >= 2)
    (OUT / "words.txt").write_text("\n".join(vocab) + "\n")

    spm_model = train_tokenizer(work, work / "train.txt")
    files = collections.Counter(n for n, _ in fortunes)
    write_json(work / "data.json", {
        "fortune_files": dict(sorted(files.items())), "skipped_files": sorted(SKIPPED_FILES),
        "fortunes": len(fortunes), "train_fortunes": len(train), "heldout_fortunes": len(heldout),
        "train_chars": sum(len(t) + 1 for _, t in train), "heldout_chars": sum(len(t) + 1 for _, t in heldout),
        "qa_train": len(qa_train), "qa_heldout": len(qa_heldout),
        "qa_kinds": dict(collections.Counter(p["kind"] for p in pairs)), "words": len(vocab),
        "tokenizer": str(spm_model)})
    log(f"data: {len(fortunes)} fortunes ({len(train)} train, {len(heldout)} held out), "
        f"{len(qa_train)}+{len(qa_heldout)} QA pairs, {len(vocab)} words")


# ------------------------------------------------------------------------------------------------ base

def load_sp(work: Path):
    return spm.SentencePieceProcessor(model_file=str(work / "tokenizer.model"))


def hf_config(vocab_size: int):
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=vocab_size, hidden_act="silu", attention_bias=False, mlp_bias=False,
                       bos_token_id=1, eos_token_id=2, pad_token_id=None, torch_dtype="float32",
                       initializer_range=0.02, **MODEL)


def encode_file(sp, path: Path) -> list[int]:
    """The whole file as one string, as `puna perplexity` tokenizes it (without the BOS)."""
    return sp.encode(path.read_text(encoding="utf-8"))


def chunked_nll(model, tokens: list[int], bos: int, ctx: int) -> tuple[float, int]:
    """Sum of negative log-likelihoods over the tokens `puna perplexity -c ctx` scores (llama-perplexity's
    scheme: chunks of ctx tokens of BOS + text, first token replaced by BOS, second half of each scored)."""
    stream = [bos] + tokens
    chunks = len(stream) // ctx
    nll, count = 0.0, 0
    first = ctx // 2
    with torch.no_grad():
        for c in range(chunks):
            chunk = stream[c * ctx:(c + 1) * ctx]
            logp = torch.log_softmax(model(torch.tensor([[bos] + chunk[1:]])).logits[0].double(), dim=-1)
            # position j predicts chunk[j + 1]; positions first ..< ctx-1 are scored
            for j in range(first, ctx - 1):
                nll -= logp[j, chunk[j + 1]].item()
            count += ctx - 1 - first
    return nll, count


def scored_positions(n_tokens_with_bos: int, ctx: int) -> list[int]:
    """Indices (into BOS + text) of the tokens that chunked_nll / puna perplexity predict and score."""
    out = []
    for c in range(n_tokens_with_bos // ctx):
        out += [c * ctx + j + 1 for j in range(ctx // 2, ctx - 1)]
    return out


def lr_at(step: int, total: int, peak: float, floor: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * t))


def stage_base(args):
    from transformers import LlamaForCausalLM, LlamaTokenizer
    setup_torch()
    work = args.work
    sp = load_sp(work)
    stream = torch.tensor(encode_file(sp, work / "train.txt"), dtype=torch.long)
    heldout = encode_file(sp, OUT / "heldout.txt")
    log(f"base: {len(stream)} training tokens, {len(heldout)} held-out tokens")
    cfg = dict(BASE)
    if args.steps:
        cfg["steps"] = args.steps
    model = LlamaForCausalLM(hf_config(sp.get_piece_size()))
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg["lr"], betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(SEED)
    ckpt_path = work / "base-checkpoint.pt"
    step, history, seconds, cpu_seconds = 0, [], 0.0, 0.0
    if ckpt_path.exists() and not args.fresh:
        ckpt = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        gen.set_state(ckpt["gen"])
        step, history, seconds, cpu_seconds = ckpt["step"], ckpt["history"], ckpt["seconds"], ckpt["cpu_seconds"]
        log(f"base: resumed at step {step}")
    model.train()
    bos = sp.bos_id()
    started, cpu_started = time.time() - seconds, time.process_time() - cpu_seconds
    window = []
    while step < cfg["steps"]:
        # Windows of CTX tokens starting with BOS, at random offsets: the same shape the perplexity sees.
        offsets = torch.randint(0, len(stream) - CTX, (cfg["batch"],), generator=gen)
        batch = torch.stack([torch.cat([torch.tensor([bos]), stream[o:o + CTX - 1]]) for o in offsets.tolist()])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg["steps"], cfg["lr"], cfg["min_lr"], cfg["warmup"])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        window.append(loss.item())
        if step % 20 == 0:
            history.append([step, round(sum(window) / len(window), 4)])
            log(f"base: step {step}/{cfg['steps']} loss {history[-1][1]:.4f} "
                f"lr {opt.param_groups[0]['lr']:.2e} {time.time() - started:.0f} s")
            window = []
        if step % cfg["checkpoint_every"] == 0 or step == cfg["steps"]:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                        "step": step, "history": history, "seconds": time.time() - started,
                        "cpu_seconds": time.process_time() - cpu_started}, ckpt_path)
    train_seconds, train_cpu_seconds = time.time() - started, time.process_time() - cpu_started
    model.eval()
    nll, count = chunked_nll(model, heldout, bos, CTX)
    out_dir = work / "hf-base"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    LlamaTokenizer(vocab_file=str(work / "tokenizer.model"), legacy=True, add_bos_token=True,
                   add_eos_token=False).save_pretrained(out_dir)
    write_json(work / "base.json", {
        "params": n_params, "steps": cfg["steps"], "batch": cfg["batch"], "ctx": CTX,
        "tokens_seen": cfg["steps"] * cfg["batch"] * CTX, "train_tokens": len(stream),
        "final_loss": history[-1][1] if history else None, "loss_history": history,
        "train_seconds": round(train_seconds, 1), "train_cpu_seconds": round(train_cpu_seconds, 1),
        "heldout_ppl_transformers_f32": math.exp(nll / count), "heldout_scored_tokens": count})
    log(f"base: done in {train_seconds:.0f} s, held-out perplexity {math.exp(nll / count):.3f}")


# ------------------------------------------------------------------------------------------------ adapter

def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def encode_pair(sp, pair: dict) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one Guanaco exchange: BOS + prompt + " " + answer + EOS, the loss on the
    answer and EOS only. The prompt's tokens are exactly what `puna run --template guanaco` evaluates."""
    prompt = guanaco_prompt(pair["q"])
    prompt_ids = [sp.bos_id()] + sp.encode(prompt)
    full = [sp.bos_id()] + sp.encode(prompt + " " + pair["a"])
    # The answer's first word starts with the meta space, so the prompt tokenizes the same on its own.
    assert full[:len(prompt_ids)] == prompt_ids, pair
    answer = full[len(prompt_ids):] + [sp.eos_id()]
    return prompt_ids + answer, [-100] * len(prompt_ids) + answer


def greedy_reply(model, sp, question: str, max_new: int) -> tuple[str, str]:
    """(reply text, finish reason) of greedy decoding, with puna run's rules for the Guanaco template:
    stop at EOS or before the stop string "### Human:", else "length" after max_new tokens."""
    ids = [sp.bos_id()] + sp.encode(guanaco_prompt(question))
    new = []
    with torch.no_grad():
        past = None
        inp = torch.tensor([ids])
        for _ in range(max_new):
            out = model(input_ids=inp, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = int(out.logits[0, -1].argmax())
            if token == sp.eos_id():
                return sp.decode(new), "eos"
            new.append(token)
            text = sp.decode(new)
            if "### Human:" in text:
                return text[:text.index("### Human:")], "stop"
            inp = torch.tensor([[token]])
    return sp.decode(new), "length"


def follows_format(reply: str, finish: str) -> bool:
    """The answer format the tests check: a reply with at least one word that ends by itself (EOS or
    the start of the next "### Human:" turn) within the token budget instead of rambling on."""
    return finish in ("eos", "stop") and WORD.search(reply) is not None


def format_rate(model, sp, pairs: list[dict]) -> tuple[float, list[dict]]:
    rows = []
    for p in pairs:
        reply, finish = greedy_reply(model, sp, p["q"], ANSWER_TOKENS)
        rows.append({"q": p["q"], "reply": reply, "finish": finish, "ok": follows_format(reply, finish),
                     "exact": reply.strip() == p["a"].strip()})
    return sum(r["ok"] for r in rows) / len(rows), rows


def stage_adapter(args):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM
    setup_torch()
    work = args.work
    sp = load_sp(work)
    base = LlamaForCausalLM.from_pretrained(work / "hf-base", torch_dtype=torch.float32)
    config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, bias="none",
                        target_modules=LORA["targets"], task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    examples = [encode_pair(sp, p) for p in read_jsonl(work / "qa-train.jsonl")]
    epochs = 1 if args.smoke else ADAPTER["epochs"]
    steps_per_epoch = math.ceil(len(examples) / ADAPTER["batch"])
    total = steps_per_epoch * epochs
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=ADAPTER["lr"], weight_decay=0.0)
    rng = random.Random(SEED + 2)
    history, step, started, cpu_started = [], 0, time.time(), time.process_time()
    model.train()
    for epoch in range(epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        losses = []
        for b in range(steps_per_epoch):
            batch = [examples[i] for i in order[b * ADAPTER["batch"]:(b + 1) * ADAPTER["batch"]]]
            width = max(len(x) for x, _ in batch)
            # Right padding, masked out of attention and loss.
            ids = torch.tensor([x + [sp.eos_id()] * (width - len(x)) for x, _ in batch])
            labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in batch])
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in batch])
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, ADAPTER["lr"], 0.0, ADAPTER["warmup"])
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            losses.append(loss.item())
        history.append([epoch + 1, round(sum(losses) / len(losses), 4)])
        log(f"adapter: epoch {epoch + 1}/{epochs} loss {history[-1][1]:.4f} {time.time() - started:.0f} s")
    train_seconds, train_cpu_seconds = time.time() - started, time.process_time() - cpu_started
    model.eval()
    out_dir = work / "adapter"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "README.md").unlink(missing_ok=True)  # PEFT's empty model-card template
    cfg_path = out_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = NAME  # instead of this machine's path to the checkpoint
    write_json(cfg_path, cfg)

    heldout = read_jsonl(OUT / "qa-heldout.jsonl")[:4 if args.smoke else None]
    rate, rows = format_rate(model, sp, heldout)
    with model.disable_adapter():
        base_rate, base_rows = format_rate(model, sp, heldout)
    write_json(work / "adapter.json", {
        "trainable_params": trainable, "examples": len(examples), "epochs": epochs, "steps": total,
        "final_loss": history[-1][1], "loss_history": history, "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1), "format_rate_transformers": rate, "format_rate_transformers_without_adapter": base_rate,
        "exact_answers_transformers": sum(r["exact"] for r in rows), "replies": rows,
        "replies_without_adapter": base_rows[:5]})
    log(f"adapter: done in {train_seconds:.0f} s, format followed {rate:.0%} (without adapter {base_rate:.0%})")


# ------------------------------------------------------------------------------------------------ export

def unigram_perplexity(train_tokens: list[int], heldout_tokens: list[int], vocab: int, bos: int) -> float:
    """Perplexity of a unigram model over the same scored positions as `puna perplexity -c CTX`:
    p(token) = (count in the training token stream + 1) / (training tokens + vocabulary size)."""
    counts = np.bincount(np.array(train_tokens), minlength=vocab).astype(np.float64)
    logp = np.log((counts + 1) / (counts.sum() + vocab))
    stream = [bos] + heldout_tokens
    positions = scored_positions(len(stream), CTX)
    return float(np.exp(-np.mean([logp[stream[i]] for i in positions])))


def puna_perplexity(puna: Path, model: Path, text: Path) -> dict:
    out = subprocess.run([puna, "perplexity", "-m", model, "-f", text, "-c", str(CTX), "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def llama_perplexity(tool: Path, model: Path, text: Path) -> float | None:
    if not tool.is_file():
        return None
    # This llama.cpp version logs asynchronously and sometimes loses the tail of its output at exit.
    for _ in range(10):
        res = subprocess.run([tool, "-m", model, "-f", text, "-c", str(CTX), "-b", str(CTX), "-t", "1"],
                             capture_output=True, text=True)
        m = re.search(r"Final estimate: PPL = ([0-9.]+)", res.stdout + res.stderr)
        if m:
            return float(m.group(1))
    raise RuntimeError(f"llama-perplexity never printed its final estimate for {model.name}")


def puna_format_rate(puna: Path, model: Path, lora: Path | None, pairs: list[dict]) -> tuple[float, list[dict]]:
    rows = []
    for p in pairs:
        cmd = [puna, "run", "-m", model, "--template", "guanaco", "-p", p["q"], "-n", str(ANSWER_TOKENS),
               "--temp", "0", "-c", str(CTX)]
        if lora:
            cmd += ["--lora", lora]
        res = subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True)
        m = re.search(r"stop: (\w+)", res.stderr)
        finish = m.group(1) if m else "?"
        rows.append({"q": p["q"], "reply": res.stdout.rstrip("\n"), "finish": finish,
                     "ok": follows_format(res.stdout, finish)})
    return sum(r["ok"] for r in rows) / len(rows), rows


def stage_export(args):
    work = args.work
    sp = load_sp(work)
    llama_src = Path(subprocess.run([str(REPO / "scripts/fetch-llama-sdist")], check=True,
                                    capture_output=True, text=True).stdout.strip())
    quantize = args.llama_build / "bin/llama-quantize"
    if not quantize.is_file():
        raise SystemExit(f"{quantize} missing: run scripts/fixtures/build-llamacpp first")
    f32 = work / f"{NAME}-f32.gguf"
    run([sys.executable, llama_src / "convert_hf_to_gguf.py", "--outtype", "f32", "--model-name", NAME,
         "--outfile", f32, work / "hf-base"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    models = {"f32": f32}
    for qtype in ("Q8_0", "Q4_0"):
        path = OUT / f"{NAME}-{qtype.lower()}.gguf"
        run([quantize, f32, path, qtype], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        models[qtype.lower()] = path
    peft_dir = OUT / f"{NAME}-qa-lora"
    if peft_dir.exists():
        shutil.rmtree(peft_dir)
    peft_dir.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copyfile(work / "adapter" / name, peft_dir / name)
    lora_gguf = OUT / f"{NAME}-qa-lora.gguf"
    run([sys.executable, llama_src / "convert_lora_to_gguf.py", "--base", work / "hf-base", "--outtype", "f16",
         "--outfile", lora_gguf, peft_dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    train_tokens = encode_file(sp, work / "train.txt")
    heldout_tokens = encode_file(sp, OUT / "heldout.txt")
    unigram = unigram_perplexity(train_tokens, heldout_tokens, sp.get_piece_size(), sp.bos_id())
    base = json.loads((work / "base.json").read_text())
    adapter = json.loads((work / "adapter.json").read_text())
    metrics = {
        "generator": "scripts/train-demo/train_demo.py",
        "seed": SEED,
        "ctx": CTX,
        "heldout_text": "heldout.txt",
        "heldout_tokens": len(heldout_tokens),
        "scored_tokens": len(scored_positions(len(heldout_tokens) + 1, CTX)),
        "unigram_perplexity": unigram,
        "unigram_method": "add-one smoothed token frequencies of the training split (same tokenizer), "
                          "scored on the positions `puna perplexity -c 256` scores",
        "perplexity": {"transformers_f32": base["heldout_ppl_transformers_f32"]},
        "llama_perplexity": {},
        "format_rate": {"transformers_lora": adapter["format_rate_transformers"],
                        "transformers_base_only": adapter["format_rate_transformers_without_adapter"]},
        "base": {k: base[k] for k in ("params", "steps", "batch", "ctx", "tokens_seen", "train_tokens",
                                      "final_loss", "train_seconds", "train_cpu_seconds")},
        "adapter": {k: adapter[k] for k in ("trainable_params", "examples", "epochs", "steps", "final_loss",
                                            "train_seconds", "train_cpu_seconds")},
        "files": {},
    }
    llama_ppl = args.llama_build / "bin/llama-perplexity"
    for kind, path in models.items():
        metrics["llama_perplexity"][kind] = llama_perplexity(llama_ppl, path, OUT / "heldout.txt")
    puna = args.puna
    if puna and puna.is_file():
        for kind, path in models.items():
            metrics["perplexity"]["puna_" + kind] = puna_perplexity(puna, path, OUT / "heldout.txt")["perplexity"]
        heldout_pairs = read_jsonl(OUT / "qa-heldout.jsonl")
        help_text = subprocess.run([puna, "run", "-h"], capture_output=True, text=True).stdout
        if "--lora" in help_text:
            rate, rows = puna_format_rate(puna, models["q8_0"], lora_gguf, heldout_pairs)
            metrics["format_rate"]["puna_q8_0_lora_gguf"] = rate
            write_json(work / "puna-replies.json", rows)
        rate, _ = puna_format_rate(puna, models["q8_0"], None, heldout_pairs)
        metrics["format_rate"]["puna_q8_0_base_only"] = rate
    else:
        log(f"export: no puna binary at {puna}; build it and rerun export for puna's numbers")
    for path in sorted(OUT.rglob("*")):
        if path.is_file() and path.name not in ("metrics.json", "MODEL_CARD.md"):
            metrics["files"][str(path.relative_to(OUT))] = path.stat().st_size
    write_json(OUT / "metrics.json", metrics)
    log("export: " + json.dumps({k: metrics[k] for k in ("unigram_perplexity", "perplexity", "llama_perplexity",
                                                          "format_rate")}))
    log(f"export: models/demo holds {sum(metrics['files'].values()) / 1e6:.2f} MB")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["data", "base", "adapter", "export", "all"])
    ap.add_argument("--work", type=Path, default=REPO / ".cache/demo-work")
    ap.add_argument("--llama-build", type=Path, default=Path(os.environ.get("LLAMA_BUILD", "/work/cache/llama-build")))
    ap.add_argument("--steps", type=int, default=0, help="override the base model's training steps (trials)")
    ap.add_argument("--fresh", action="store_true", help="ignore an existing base checkpoint")
    ap.add_argument("--out", type=Path, help="where the artifacts go (default models/demo)")
    ap.add_argument("--smoke", action="store_true", help="adapter: one epoch and four checked questions (a quick trial)")
    ap.add_argument("--puna", type=Path, default=REPO / ".build/release/puna",
                    help="puna binary for the export stage's measurements")
    args = ap.parse_args()
    global OUT
    OUT = args.out or OUT
    stages = {"data": stage_data, "base": stage_base, "adapter": stage_adapter, "export": stage_export}
    for name in (["data", "base", "adapter", "export"] if args.stage == "all" else [args.stage]):
        stages[name](args)


if __name__ == "__main__":
    main()
