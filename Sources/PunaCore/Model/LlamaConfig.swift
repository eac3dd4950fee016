/// The hyperparameters of a LLaMA-family model, read from `<arch>.*` GGUF keys.
public struct LlamaConfig: Equatable {
    public var architecture: String
    public var contextLength: Int
    public var embeddingLength: Int      // n_embd
    public var blockCount: Int           // n_layers
    public var feedForwardLength: Int    // n_ff
    public var headCount: Int            // n_heads
    public var headCountKV: Int          // n_kv_heads (< headCount for grouped-query attention)
    public var ropeDimensionCount: Int   // dims of each head that RoPE rotates
    public var ropeFreqBase: Float
    public var ropeScaleLinear: Float    // positions are divided by this (1 = none)
    public var rmsNormEpsilon: Float
    public var vocabSize: Int

    public var headDimension: Int { embeddingLength / headCount }
    /// Width of the K and V projections.
    public var kvDimension: Int { headDimension * headCountKV }

    /// Architectures whose tensors and keys follow LLaMA's layout.
    public static let supportedArchitectures = ["llama"]

    public init(architecture: String = "llama", contextLength: Int, embeddingLength: Int, blockCount: Int,
                feedForwardLength: Int, headCount: Int, headCountKV: Int, ropeDimensionCount: Int,
                ropeFreqBase: Float = 10000, ropeScaleLinear: Float = 1, rmsNormEpsilon: Float = 1e-5, vocabSize: Int) {
        self.architecture = architecture
        self.contextLength = contextLength
        self.embeddingLength = embeddingLength
        self.blockCount = blockCount
        self.feedForwardLength = feedForwardLength
        self.headCount = headCount
        self.headCountKV = headCountKV
        self.ropeDimensionCount = ropeDimensionCount
        self.ropeFreqBase = ropeFreqBase
        self.ropeScaleLinear = ropeScaleLinear
        self.rmsNormEpsilon = rmsNormEpsilon
        self.vocabSize = vocabSize
    }

    /// Read and validate the hyperparameters; errors name the missing or bad key.
    public init(gguf: GGUFFile) throws(PunaError) {
        guard let arch = gguf.architecture else {
            throw PunaError("\(gguf.path): missing key general.architecture")
        }
        guard LlamaConfig.supportedArchitectures.contains(arch) else {
            throw PunaError("\(gguf.path): architecture '\(arch)' is not supported (Puna runs: \(LlamaConfig.supportedArchitectures.joined(separator: ", ")))")
        }
        func required(_ name: String) throws(PunaError) -> Int {
            let key = "\(arch).\(name)"
            guard let value = gguf[key] else { throw PunaError("\(gguf.path): missing key \(key)") }
            guard let v = value.intValue, v > 0, v <= 1 << 30 else {
                throw PunaError("\(gguf.path): key \(key) must be a positive integer of sane size")
            }
            return v
        }
        // Each number within what a real model uses, by orders of magnitude: outside, the forward
        // pass computes infinities and NaN (a rope base of 1e-45 gives infinite frequencies).
        func optionalFloat(_ name: String, _ fallback: Float, _ range: ClosedRange<Double>) throws(PunaError) -> Float {
            let key = "\(arch).\(name)"
            guard let value = gguf[key] else { return fallback }
            guard let v = value.doubleValue, v.isFinite, range.contains(v) else {
                throw PunaError("\(gguf.path): key \(key) must be a number from \(range.lowerBound) to \(range.upperBound), found \(value.doubleValue.map { "\($0)" } ?? value.type.name)")
            }
            return Float(v)
        }
        architecture = arch
        contextLength = try required("context_length")
        embeddingLength = try required("embedding_length")
        blockCount = try required("block_count")
        feedForwardLength = try required("feed_forward_length")
        headCount = try required("attention.head_count")
        headCountKV = gguf["\(arch).attention.head_count_kv"] == nil ? headCount : try required("attention.head_count_kv")
        guard embeddingLength % headCount == 0 else {
            throw PunaError("\(gguf.path): \(arch).embedding_length \(embeddingLength) is not a multiple of \(arch).attention.head_count \(headCount)")
        }
        guard headCount % headCountKV == 0 else {
            throw PunaError("\(gguf.path): \(arch).attention.head_count \(headCount) is not a multiple of \(arch).attention.head_count_kv \(headCountKV)")
        }
        let headDim = embeddingLength / headCount
        // LLaMA's heads are embedding_length / head_count wide; a file that says otherwise describes
        // another shape, which computing with this one would get wrong.
        for name in ["attention.key_length", "attention.value_length"] where gguf["\(arch).\(name)"] != nil {
            let v = try required(name)
            guard v == headDim else {
                throw PunaError("\(gguf.path): \(arch).\(name) is \(v), but Puna's \(arch) needs it equal to the head size embedding_length / head_count = \(headDim)")
            }
        }
        ropeDimensionCount = gguf["\(arch).rope.dimension_count"] == nil ? headDim : try required("rope.dimension_count")
        guard ropeDimensionCount <= headDim, ropeDimensionCount % 2 == 0 else {
            throw PunaError("\(gguf.path): \(arch).rope.dimension_count \(ropeDimensionCount) must be even and at most the head size \(headDim)")
        }
        ropeFreqBase = try optionalFloat("rope.freq_base", 10000, 1...1e10)
        rmsNormEpsilon = try optionalFloat("attention.layer_norm_rms_epsilon", 1e-5, 1e-12...1)
        ropeScaleLinear = 1
        if let type = gguf.string("\(arch).rope.scaling.type"), type != "none" {
            guard type == "linear" else {
                throw PunaError("\(gguf.path): \(arch).rope.scaling.type '\(type)' is not supported (only linear)")
            }
            ropeScaleLinear = try optionalFloat("rope.scaling.factor", 1, 1e-3...1e4)
        }
        if gguf["\(arch).vocab_size"] != nil {
            vocabSize = try required("vocab_size")
        } else if let tokens = gguf["tokenizer.ggml.tokens"]?.arrayValue {
            vocabSize = tokens.count
        } else if let embd = gguf.tensorInfo("token_embd.weight"), embd.shape.count == 2 {
            vocabSize = embd.shape[1]
        } else {
            throw PunaError("\(gguf.path): cannot tell the vocabulary size (no \(arch).vocab_size, tokenizer.ggml.tokens or token_embd.weight)")
        }
        // Layers past block_count would be silently dropped: the file is inconsistent.
        for t in gguf.tensors where t.name.hasPrefix("blk.") {
            let digits = t.name.utf8.dropFirst(4).prefix { $0 >= 48 && $0 <= 57 }
            guard !digits.isEmpty else { continue }
            let layer = Int(String(decoding: digits, as: UTF8.self))  // nil: too many digits for any layer
            if layer.map({ $0 >= blockCount }) ?? true {
                throw PunaError("\(gguf.path): tensor '\(t.name)' belongs to a layer past \(arch).block_count = \(blockCount)")
            }
        }
    }
}
