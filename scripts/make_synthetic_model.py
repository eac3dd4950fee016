#!/usr/bin/env python3
"""Write a LLaMA-7B-shaped GGUF with random (but numerically sane) quantized weights and the real
LLaMA SentencePiece vocabulary, for speed and memory work. Run through scripts/make-synthetic-7b,
which supplies the llama.cpp tree (for gguf-py and ggml-vocab-llama-spm.gguf) and the Python venv.

The weight blocks are generated directly in their quantized layout (random codes, random but
finite f16 scales) rather than by quantizing floats: quantizing 7B floats in numpy would take far
too long, and for speed work only the layout and the bytes' volume matter. Each tensor is made,
written and dropped before the next, so memory stays at the size of the largest tensor.

Tensor types follow what llama-quantize produces for a LLaMA-7B:
  q4_0:   every matrix q4_0 (token_embd included), output.weight q6_K, norms f32.
  q4_k_m: every matrix q4_K, except output.weight and attn_v/ffn_down in the "more bits" layers
          (the first and last eighth of the layers, and every third one between) which are q6_K.
  q8_0:   every matrix q8_0, output.weight included, norms f32.
"""
import argparse
import os
import sys
import time

import numpy as np


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--type", choices=["q4_0", "q4_k_m", "q8_0"], default="q4_0")
    p.add_argument("-o", "--output", help="output path (default /work/cache/synthetic/llama-7b-synthetic-TYPE.gguf)")
    p.add_argument("--vocab", required=True, help="ggml-vocab-llama-spm.gguf (the real LLaMA vocab)")
    p.add_argument("--seed", type=int, default=7)
    # Smaller shapes, for checking the script itself quickly; the defaults are LLaMA-7B's.
    p.add_argument("--n-layer", type=int, default=32)
    p.add_argument("--n-embd", type=int, default=4096)
    p.add_argument("--n-head", type=int, default=32)
    p.add_argument("--n-ff", type=int, default=11008)
    p.add_argument("--n-ctx", type=int, default=4096)
    return p.parse_args()


def use_more_bits(i_layer, n_layer):
    # llama-quantize's rule for the layers that get q6_K in Q4_K_M (attn_v and ffn_down).
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def f16_scales(rng, n, magnitude, signed):
    """n finite, normal f16 scales of about `magnitude` (never tiny: no subnormals, no zero)."""
    s = rng.uniform(0.5, 1.5, n) * magnitude
    if signed:
        s *= np.where(rng.integers(0, 2, n) == 0, -1.0, 1.0)
    return s.astype("<f2").view(np.uint8).reshape(n, 2)


def random_blocks(rng, qtype, n_blocks, gguf):
    """Quantized blocks as a flat uint8 array: random codes, scales chosen so weights are ~0.01."""
    T = gguf.GGMLQuantizationType
    block_bytes = gguf.GGML_QUANT_SIZES[qtype][1]
    blocks = np.frombuffer(bytearray(rng.bytes(n_blocks * block_bytes)), dtype=np.uint8).reshape(n_blocks, block_bytes)
    if qtype == T.Q4_0:
        # d f16 | 16 bytes of nibbles; w = d * (q - 8), q uniform in 0..15 (std ~4.6)
        blocks[:, 0:2] = f16_scales(rng, n_blocks, 0.0025, signed=True)
    elif qtype == T.Q8_0:
        # d f16 | 32 int8; w = d * q, q uniform in -128..127 (std ~74)
        blocks[:, 0:2] = f16_scales(rng, n_blocks, 1.4e-4, signed=True)
    elif qtype == T.Q4_K:
        # d f16 | dmin f16 | 12 bytes of 6-bit scales and mins | 128 bytes of nibbles;
        # w = d * sc * q - dmin * m with sc, m uniform in 0..63: dmin ~ 7.5 d centres the weights.
        blocks[:, 0:2] = f16_scales(rng, n_blocks, 6e-5 * 1.5, signed=False)
        blocks[:, 2:4] = f16_scales(rng, n_blocks, 6e-5 * 1.5 * 7.5, signed=False)
    elif qtype == T.Q6_K:
        # 128 bytes low nibbles | 64 bytes high bits | 16 int8 scales | d f16; w = d * sc * (q - 32).
        # Scales kept small (|sc| <= 16) so that d stays a normal f16 number.
        blocks[:, 192:208] = rng.integers(-16, 17, (n_blocks, 16), dtype=np.int8).view(np.uint8)
        blocks[:, 208:210] = f16_scales(rng, n_blocks, 9e-5, signed=False)
    else:
        raise ValueError(f"no generator for {qtype.name}")
    return blocks.reshape(-1)


def main():
    args = parse_args()
    import gguf  # from the llama.cpp tree (PYTHONPATH set by the wrapper)

    T = gguf.GGMLQuantizationType
    L, E, H, FF, V = args.n_layer, args.n_embd, args.n_head, args.n_ff, 32000
    out = args.output or f"/work/cache/synthetic/llama-7b-synthetic-{args.type}.gguf"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

    base = {"q4_0": T.Q4_0, "q4_k_m": T.Q4_K, "q8_0": T.Q8_0}[args.type]
    file_type = {"q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[args.type]
    output_type = T.Q8_0 if args.type == "q8_0" else T.Q6_K

    # (name, numpy-order shape [rows, cols] or [n], type); in evaluation order so a decode reads the
    # file front to back.
    tensors = [("token_embd.weight", (V, E), base)]
    for i in range(L):
        more = args.type == "q4_k_m" and use_more_bits(i, L)
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", (E,), T.F32),
            (p + "attn_q.weight", (E, E), base),
            (p + "attn_k.weight", (E, E), base),
            (p + "attn_v.weight", (E, E), T.Q6_K if more else base),
            (p + "attn_output.weight", (E, E), base),
            (p + "ffn_norm.weight", (E,), T.F32),
            (p + "ffn_gate.weight", (FF, E), base),
            (p + "ffn_up.weight", (FF, E), base),
            (p + "ffn_down.weight", (E, FF), T.Q6_K if more else base),
        ]
    tensors += [("output_norm.weight", (E,), T.F32), ("output.weight", (V, E), output_type)]

    def nbytes(shape, qtype):
        if qtype == T.F32:
            return 4 * int(np.prod(shape))
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        assert shape[-1] % block == 0, (shape, qtype)
        return int(np.prod(shape)) // block * size

    w = gguf.GGUFWriter(out + ".partial", "llama")
    # The whole tokenizer section comes from the real vocab file; the hyperparameters are LLaMA-7B's
    # (the vocab file carries the same ones) unless the arguments shrink the shape.
    vocab = gguf.GGUFReader(args.vocab)
    for key, field in vocab.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, field.contents(), vtype, sub_type=sub)
    w.add_name(f"llama-7b-synthetic-{args.type}")
    w.add_file_type(int(file_type))
    w.add_block_count(L)
    w.add_embedding_length(E)
    w.add_feed_forward_length(FF)
    w.add_head_count(H)
    w.add_head_count_kv(H)
    w.add_context_length(args.n_ctx)
    w.add_rope_dimension_count(E // H)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(V)

    for name, shape, qtype in tensors:
        w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes(shape, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()

    rng = np.random.default_rng(args.seed)
    total = sum(nbytes(s, q) for _, s, q in tensors)
    written = 0
    start = time.time()
    for name, shape, qtype in tensors:
        if qtype == T.F32:
            data = np.ones(shape, dtype=np.float32)  # RMSNorm weights of 1
        else:
            data = random_blocks(rng, qtype, int(np.prod(shape)) // gguf.GGML_QUANT_SIZES[qtype][0], gguf)
        w.write_tensor_data(data)
        written += data.nbytes
        del data
        if name.endswith("ffn_down.weight") or name == "output.weight":
            print(f"\r{written / 2**30:.2f} / {total / 2**30:.2f} GiB  ({time.time() - start:.0f} s)", end="", file=sys.stderr)
    w.close()
    os.replace(out + ".partial", out)
    counts = {}
    for _, _, q in tensors:
        counts[q.name] = counts.get(q.name, 0) + 1
    print(f"\nwrote {out}: {os.path.getsize(out)} bytes, tensors {counts}", file=sys.stderr)
    print(out)


if __name__ == "__main__":
    main()
