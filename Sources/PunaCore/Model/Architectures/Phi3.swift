import CPuna

// `phi3`: Phi-3, Phi-3.5, Phi-4-mini: Q, K and V in one matrix (attn_qkv), gate and up in one
// (ffn_up, gate first), RoPE over halves of the first rope.dimension_count dims of each head, and
// LongRoPE: per-pair factors from rope_factors_short/long tensors (short while the context fits the
// original one, as llama.cpp chooses), cos and sin scaled by rope.scaling.attn_factor.
extension Architecture {
    static let phi3 = Architecture(
        name: "phi3",
        families: "Phi-3, Phi-3.5, Phi-4-mini",
        ropeStyle: .halves,
        reordersQueryKeyRows: false,
        requiredLayerTensors: [],
        optionalLayerTensors: [],
        peftModules: [("qkv_proj", .fusedQKV), ("o_proj", .output), ("gate_up_proj", .up), ("down_proj", .down)],
        readsLongRoPE: true,
        readKeys: { (keys: ConfigKeys, config: inout ModelConfig) throws(PunaError) in
            config.ropeOriginalContext = try keys.optional("rope.scaling.original_context_length") ?? 0
            let defaultFactor: Float
            if config.ropeOriginalContext > 0 && config.contextLength > config.ropeOriginalContext {
                // Hugging Face's LongRoPE default when the file gives none: sqrt(1 + ln(s) / ln(original)).
                let s = Double(config.contextLength) / Double(config.ropeOriginalContext)
                defaultFactor = Float((1 + puna_ln(s) / puna_ln(Double(config.ropeOriginalContext))).squareRoot())
            } else {
                defaultFactor = 1
            }
            config.ropeAttentionFactor = try keys.float("rope.scaling.attn_factor", defaultFactor, 0.1...10)
            config.slidingWindow = try keys.window("attention.sliding_window")
        })
}
