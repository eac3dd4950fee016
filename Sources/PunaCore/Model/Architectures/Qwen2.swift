// `qwen2`: Qwen2 / Qwen2.5 (and DeepSeek-R1-Distill-Qwen): LLaMA's layer with biases on Q, K and V,
// RoPE over halves of each head.
extension Architecture {
    static let qwen2 = Architecture(
        name: "qwen2",
        families: "Qwen2, Qwen2.5, DeepSeek-R1-Distill-Qwen",
        ropeStyle: .halves,
        reordersQueryKeyRows: false,
        requiredLayerTensors: [.queryBias, .keyBias, .valueBias],
        optionalLayerTensors: [],
        peftModules: llamaModules,
        readsLongRoPE: false,
        readKeys: { (keys: ConfigKeys, config: inout ModelConfig) throws(PunaError) in
            config.slidingWindow = 0  // Qwen2's use_sliding_window is off in every released model
        })
}
