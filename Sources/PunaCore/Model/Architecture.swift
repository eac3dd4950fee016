/// One `general.architecture`: how its GGUF keys and tensors map onto Puna's model. The loader
/// (LanguageModel), LoRA targeting, the memory estimate, `puna info` and the Vulkan backend all
/// read this description; adding an architecture is one file under Architectures/ and a line in
/// `all`.
struct Architecture {
    let name: String
    /// What Puna checked it against, for `puna info` and the README's table.
    let families: String
    let ropeStyle: RopeStyle
    /// Whether convert_hf_to_gguf.py reordered the rows of attn_q/attn_k per head for adjacent-pair
    /// RoPE (LLaMA's converter does): a PEFT adapter's B rows for them need the same reordering.
    let reordersQueryKeyRows: Bool
    /// Per-layer tensors this architecture must have beyond the common ones (`LayerTensor`).
    let requiredLayerTensors: [LayerTensor]
    /// Per-layer tensors it may have (a file without them computes without them).
    let optionalLayerTensors: [LayerTensor]
    /// Hugging Face module names (what PEFT's target_modules say) → the GGUF matrix they update.
    let peftModules: [(module: String, matrix: LayerTensor)]
    /// Whether `<arch>.rope.scaling.type = longrope` with rope_factors_short/long tensors is read.
    let readsLongRoPE: Bool
    var norm: NormKind = .rms
    var feedForward: FeedForwardKind = .swiglu
    /// Whether the converter regrouped a fused QKV matrix from Hugging Face's per-head [q k v]
    /// interleaving into Q, K, V blocks (BLOOM): a PEFT adapter's B rows need the same regrouping.
    var regroupsPerHeadQKV = false
    /// The architecture's own keys, after the common ones (ModelConfig.init).
    let readKeys: (ConfigKeys, inout ModelConfig) throws(PunaError) -> Void

    static let all: [Architecture] = [.llama, .qwen2, .qwen3, .phi3, .gemma2, .gemma3, .bloom]

    static func named(_ name: String) -> Architecture? {
        for a in all where a.name == name { return a }
        return nil
    }
}

/// The tensors a layer can have, with their GGUF names (`blk.N.<name>`). Which of them a layer
/// has is the architecture's choice; the forward pass reads them all through `LanguageModel.Layer`.
enum LayerTensor: Equatable {
    case attentionNorm, query, key, value, fusedQKV, output
    case queryBias, keyBias, valueBias, fusedQKVBias, outputBias
    case queryNorm, keyNorm
    case attentionPostNorm
    case ffnNorm, gate, up, down, upBias, downBias
    case ffnPostNorm
    case attentionNormBias, ffnNormBias

    var name: String {
        switch self {
        case .attentionNorm: return "attn_norm.weight"
        case .query: return "attn_q.weight"
        case .key: return "attn_k.weight"
        case .value: return "attn_v.weight"
        case .fusedQKV: return "attn_qkv.weight"
        case .output: return "attn_output.weight"
        case .queryBias: return "attn_q.bias"
        case .keyBias: return "attn_k.bias"
        case .valueBias: return "attn_v.bias"
        case .fusedQKVBias: return "attn_qkv.bias"
        case .outputBias: return "attn_output.bias"
        case .upBias: return "ffn_up.bias"
        case .downBias: return "ffn_down.bias"
        case .attentionPostNorm: return "post_attention_norm.weight"
        case .ffnPostNorm: return "post_ffw_norm.weight"
        case .attentionNormBias: return "attn_norm.bias"
        case .ffnNormBias: return "ffn_norm.bias"
        case .queryNorm: return "attn_q_norm.weight"
        case .keyNorm: return "attn_k_norm.weight"
        case .ffnNorm: return "ffn_norm.weight"
        case .gate: return "ffn_gate.weight"
        case .up: return "ffn_up.weight"
        case .down: return "ffn_down.weight"
        }
    }

    /// Tensors that are refused unless the architecture lists them (a file with them describes
    /// a computation Puna's version of the architecture would silently skip).
    static let optionalParts: [LayerTensor] = [.queryBias, .keyBias, .valueBias, .fusedQKVBias, .outputBias, .upBias, .downBias,
                                               .queryNorm, .keyNorm, .attentionPostNorm, .ffnPostNorm, .attentionNormBias, .ffnNormBias]

    /// The GGUF stem LoRA targets use ("attn_q" of "blk.3.attn_q.weight").
    var stem: String { String(name.dropLast(".weight".count)) }

    /// Matrices in the order a layer computes them (LoRA targets are listed in this order).
    static let matrices: [LayerTensor] = [.query, .key, .value, .fusedQKV, .output, .gate, .up, .down]
}

extension Architecture {
    /// Modules of the usual LLaMA-shaped layer as PEFT names them.
    static let llamaModules: [(module: String, matrix: LayerTensor)] = [
        ("q_proj", .query), ("k_proj", .key), ("v_proj", .value), ("o_proj", .output),
        ("gate_proj", .gate), ("up_proj", .up), ("down_proj", .down),
    ]

    /// Every PEFT module name any architecture maps, with its GGUF stem (LoRA parsing happens
    /// before the base model is known; binding checks the base has the matrix).
    static var allPEFTModules: [(module: String, stem: String)] {
        var out: [(module: String, stem: String)] = []
        for a in all {
            for m in a.peftModules where !out.contains(where: { $0.module == m.module }) { out.append((m.module, m.matrix.stem)) }
        }
        return out
    }
}

extension ModelConfig {
    /// What the model computes beyond the plain LLaMA-2 layer, read from its keys and its layer 0
    /// tensors (for `puna info`).
    public func features(gguf: GGUFFile) -> [String] {
        var out: [String] = []
        func has(_ t: LayerTensor) -> Bool { gguf.tensorInfo("blk.0." + t.name) != nil }
        if ropeStyle == .halves { out.append("RoPE over head halves (NEOX)") }
        if ropeDimensionCount < headDimension { out.append("partial RoPE (\(ropeDimensionCount) of \(headDimension) dims)") }
        if gguf.tensorInfo("rope_freqs.weight") != nil { out.append("RoPE frequency factors (Llama 3.1+ scaling)") }
        if ropeScaleLinear != 1 { out.append("linear RoPE scaling ×\(ropeScaleLinear)") }
        if gguf.tensorInfo("rope_factors_long.weight") != nil {
            out.append("LongRoPE (short factors up to \(ropeOriginalContext) positions, long beyond; attn factor \(ropeAttentionFactor))")
        }
        if headCountKV < headCount { out.append("grouped-query attention (\(headCount / headCountKV) query heads per KV head)") }
        if headDimension * headCount != embeddingLength { out.append("head size \(headDimension) (key_length, not n_embd / n_heads)") }
        if has(.fusedQKV) { out.append("fused QKV") }
        if has(.queryBias) || has(.keyBias) || has(.valueBias) { out.append("Q/K/V biases") }
        if has(.queryNorm) || has(.keyNorm) { out.append("per-head Q/K RMSNorm") }
        if has(.attentionPostNorm) || has(.ffnPostNorm) { out.append("post-norms after attention and feed-forward") }
        if norm == .layerNorm { out.append("LayerNorm with bias") }
        if alibiMaxBias != nil { out.append("ALiBi (no RoPE)") }
        if feedForward == .geglu { out.append("GeGLU (tanh GELU)") }
        if feedForward == .gelu { out.append("GELU feed-forward without gate") }
        if embeddingScale != 1 { out.append("embeddings × \(embeddingScale)") }
        if attentionSoftcap > 0 { out.append("attention soft-cap \(attentionSoftcap)") }
        if finalLogitSoftcap > 0 { out.append("final logit soft-cap \(finalLogitSoftcap)") }
        if let s = attentionScale { out.append("attention scale \(s)") }
        if slidingWindowPattern > 0 && slidingWindow > 0 { out.append("local layers: all but every \(slidingWindowPattern)th") }
        if let base = localRopeFreqBase { out.append("local layers' RoPE base \(base)") }
        if !has(.gate) && !gguf.tensors.isEmpty && feedForward != .gelu { out.append("fused gate/up") }
        if slidingWindow > 0 { out.append("sliding-window attention (\(slidingWindow))") }
        if gguf.tensorInfo("output.weight") == nil && !gguf.tensors.isEmpty { out.append("tied embeddings") }
        return out
    }
}
