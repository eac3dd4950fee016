// `bloom`: BLOOM, BLOOMZ and their fine-tunes (BELLE): no RoPE but ALiBi biases on the attention
// scores, LayerNorm with bias everywhere (also right after the token embedding), Q, K and V in one
// matrix (the converter reorders HF's per-head interleaving into Q, K, V blocks), biases on every
// matrix, and a feed-forward of GELU(up) without gate; tied embeddings.
extension Architecture {
    static let bloom = Architecture(
        name: "bloom",
        families: "BLOOM, BLOOMZ, BELLE",
        ropeStyle: .adjacentPairs,
        reordersQueryKeyRows: false,
        requiredLayerTensors: [.fusedQKV, .fusedQKVBias, .outputBias, .upBias, .downBias, .attentionNormBias, .ffnNormBias],
        optionalLayerTensors: [],
        peftModules: [("query_key_value", .fusedQKV), ("dense", .output), ("dense_h_to_4h", .up), ("dense_4h_to_h", .down)],
        readsLongRoPE: false,
        norm: .layerNorm, feedForward: .gelu, regroupsPerHeadQKV: true,
        readKeys: { (keys: ConfigKeys, config: inout ModelConfig) throws(PunaError) in
            config.rmsNormEpsilon = try keys.float("attention.layer_norm_epsilon", 1e-5, 1e-12...1)
            config.alibiMaxBias = try keys.float("attention.max_alibi_bias", 8, 0.01...1e3)
        })
}
