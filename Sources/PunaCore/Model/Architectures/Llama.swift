// `llama`: LLaMA 1/2/3.x, Mistral, SmolLM2, Vicuna, Guanaco... Llama 3.1+ scaling comes as the
// rope_freqs.weight tensor (read by the loader); Mistral's sliding window as a key.
extension Architecture {
    static let llama = Architecture(
        name: "llama",
        families: "LLaMA 1/2, Llama 3.x, Mistral, SmolLM2",
        ropeStyle: .adjacentPairs,
        reordersQueryKeyRows: true,
        requiredLayerTensors: [],
        optionalLayerTensors: [.queryBias, .keyBias, .valueBias],
        peftModules: llamaModules,
        readsLongRoPE: false,
        readKeys: { (keys: ConfigKeys, config: inout ModelConfig) throws(PunaError) in
            config.slidingWindow = try keys.window("attention.sliding_window")
        })
}
