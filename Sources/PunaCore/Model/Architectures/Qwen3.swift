// `qwen3`: Qwen3: no Q/K/V biases, an RMSNorm over each query and key head before RoPE, heads
// whose size is attention.key_length (not n_embd / n_heads).
extension Architecture {
    static let qwen3 = Architecture(
        name: "qwen3",
        families: "Qwen3",
        ropeStyle: .halves,
        reordersQueryKeyRows: false,
        requiredLayerTensors: [.queryNorm, .keyNorm],
        optionalLayerTensors: [],
        peftModules: llamaModules,
        readsLongRoPE: false,
        readKeys: { (keys: ConfigKeys, config: inout ModelConfig) throws(PunaError) in })
}
