// `gemma2` and `gemma3`: embeddings × sqrt(n_embd), GeGLU, RMSNorm before and after attention and
// feed-forward (the converter stored Gemma's 1 + w as the weight), RoPE over head halves, tied
// embeddings, and local (sliding-window) layers in a pattern: Gemma 2 alternates, Gemma 3 has five
// local layers to one global. Gemma 2 soft-caps attention scores and final logits; Gemma 3 has
// per-head Q/K norms and its own RoPE base on local layers (`rope.freq_base_swa`, 10000 by default).
extension Architecture {
    static let gemma2 = Architecture(
        name: "gemma2",
        families: "Gemma 2",
        ropeStyle: .halves,
        reordersQueryKeyRows: false,
        requiredLayerTensors: [.attentionPostNorm, .ffnPostNorm],
        optionalLayerTensors: [],
        peftModules: llamaModules,
        readsLongRoPE: false,
        norm: .rms, feedForward: .geglu,
        readKeys: { (keys: ConfigKeys, config: inout ModelConfig) throws(PunaError) in
            try readGemmaKeys(keys, &config, defaultPattern: 2, defaultWindow: 4096)
            config.attentionSoftcap = try keys.float("attn_logit_softcapping", 0, 0...1e4)
            config.localRopeFreqBase = try keys.optionalFloat("rope.freq_base_swa", 1...1e10)
        })

    static let gemma3 = Architecture(
        name: "gemma3",
        families: "Gemma 3 (text)",
        ropeStyle: .halves,
        reordersQueryKeyRows: false,
        requiredLayerTensors: [.attentionPostNorm, .ffnPostNorm, .queryNorm, .keyNorm],
        optionalLayerTensors: [],
        peftModules: llamaModules,
        readsLongRoPE: false,
        norm: .rms, feedForward: .geglu,
        readKeys: { (keys: ConfigKeys, config: inout ModelConfig) throws(PunaError) in
            try readGemmaKeys(keys, &config, defaultPattern: 6, defaultWindow: 0)
            if config.slidingWindow > 0 {
                config.localRopeFreqBase = try keys.optionalFloat("rope.freq_base_swa", 1...1e10) ?? 10000
            }
        })

    /// The keys both Gemmas share.
    static func readGemmaKeys(_ keys: ConfigKeys, _ config: inout ModelConfig, defaultPattern: Int, defaultWindow: Int) throws(PunaError) {
        config.embeddingScale = Float(config.embeddingLength).squareRoot()
        config.finalLogitSoftcap = try keys.float("final_logit_softcapping", 0, 0...1e4)
        config.slidingWindow = keys.gguf[keys.key("attention.sliding_window")] == nil ? defaultWindow : try keys.window("attention.sliding_window")
        config.slidingWindowPattern = defaultPattern
        if let value = keys.gguf[keys.key("attention.sliding_window_pattern")] {
            if let n = value.intValue {
                guard n >= 1, n <= 1 << 16 else {
                    throw PunaError("\(keys.gguf.path): key \(keys.key("attention.sliding_window_pattern")) must be from 1 to 65536")
                }
                config.slidingWindowPattern = n
            } else if let list = value.arrayValue {
                var flags: [Bool] = []
                for v in list {
                    guard let b = v.boolValue else { break }
                    flags.append(b)
                }
                guard flags.count == list.count, flags.count == config.blockCount else {
                    throw PunaError("\(keys.gguf.path): key \(keys.key("attention.sliding_window_pattern")) must be a number or one bool per layer (\(config.blockCount))")
                }
                config.slidingWindowLayers = flags
            } else {
                throw PunaError("\(keys.gguf.path): key \(keys.key("attention.sliding_window_pattern")) must be a number or an array of bools")
            }
        }
        if let scale = try keys.optionalFloat("attention.scale", 1e-6...1e3) { config.attentionScale = scale }
    }
}
