/// The hyperparameters of a model, read from `<arch>.*` GGUF keys: the common ones here, the
/// architecture's own in its file under Architectures/.
public struct ModelConfig: Equatable {
    public var architecture: String
    public var contextLength: Int
    public var embeddingLength: Int      // n_embd
    public var blockCount: Int           // n_layers
    public var feedForwardLength: Int    // n_ff
    public var headCount: Int            // n_heads
    public var headCountKV: Int          // n_kv_heads (< headCount for grouped-query attention)
    public var headDimension: Int        // attention.key_length, else n_embd / n_heads
    public var ropeDimensionCount: Int   // dims of each head that RoPE rotates
    public var ropeFreqBase: Float
    public var ropeScaleLinear: Float    // positions are divided by this (1 = none)
    public var ropeStyle: RopeStyle
    /// LongRoPE: the context the short factors are for (0: no LongRoPE), and the factor that
    /// scales cos and sin.
    public var ropeOriginalContext: Int = 0
    public var ropeAttentionFactor: Float = 1
    /// > 0: each token attends only to the last `slidingWindow` positions (Mistral), on every
    /// layer or, with a pattern, on the local layers only.
    public var slidingWindow: Int = 0
    /// 0: the window (if any) applies to every layer. n > 0: layer i is local (windowed) unless
    /// (i + 1) is a multiple of n: Gemma 2 alternates (n = 2), Gemma 3 has 5 local : 1 global (n = 6).
    public var slidingWindowPattern: Int = 0
    /// Per layer, whether it is local (the file's `attention.sliding_window_pattern` as a list); overrides the pattern.
    public var slidingWindowLayers: [Bool]? = nil
    /// RoPE base of the local layers when it differs from the global one (Gemma 3: 10000); local
    /// layers then get no frequency scaling either.
    public var localRopeFreqBase: Float? = nil
    /// No RoPE: ALiBi position biases on the attention scores (BLOOM), slopes for this maximum bias.
    public var alibiMaxBias: Float? = nil
    /// Scores are q·k × attentionScale (1/sqrt(head size) unless the file says otherwise).
    public var attentionScale: Float? = nil
    /// > 0: attention scores / final logits are soft-capped: cap · tanh(x / cap) (Gemma 2).
    public var attentionSoftcap: Float = 0
    public var finalLogitSoftcap: Float = 0
    /// Token embeddings are multiplied by this (Gemma: sqrt(n_embd)).
    public var embeddingScale: Float = 1
    /// The norm everywhere: RMSNorm, or LayerNorm with bias (BLOOM).
    public var norm: NormKind = .rms
    /// The feed-forward block's shape.
    public var feedForward: FeedForwardKind = .swiglu
    /// Epsilon of every norm (`attention.layer_norm_rms_epsilon`, or `attention.layer_norm_epsilon` for LayerNorm).
    public var rmsNormEpsilon: Float
    public var vocabSize: Int

    /// Width of the query projection and of the attention output.
    public var queryDimension: Int { headDimension * headCount }
    /// Width of the K and V projections.
    public var kvDimension: Int { headDimension * headCountKV }

    /// Whether layer `layer` attends through the sliding window.
    public func isLocal(layer: Int) -> Bool {
        guard slidingWindow > 0 else { return false }
        if let layers = slidingWindowLayers { return layer < layers.count && layers[layer] }
        return slidingWindowPattern <= 0 || (layer + 1) % slidingWindowPattern != 0
    }

    /// The window of a layer (0: every position).
    public func attentionWindow(layer: Int) -> Int { isLocal(layer: layer) ? slidingWindow : 0 }

    /// How many layers are local (O(1) in the layer count: hostile files claim 2^30 layers).
    public var localLayerCount: Int {
        if slidingWindow <= 0 { return 0 }
        if let layers = slidingWindowLayers { return layers.prefix(blockCount).filter { $0 }.count }
        if slidingWindowPattern > 0 { return blockCount - blockCount / slidingWindowPattern }
        return blockCount
    }

    /// Rows of the ring a local layer keeps in a cache of `context` positions: window + the
    /// longest step − 1 (+ `rewind` positions that a chat may take back); nil when that is not
    /// fewer than the context (the layer then keeps every position).
    public func kvRingRows(context: Int, step: Int, rewind: Int = KVCache.rewindRows) -> Int? {
        guard slidingWindow > 0 else { return nil }
        let ring = slidingWindow + max(step, 1) - 1 + rewind
        return ring < context ? ring : nil
    }

    /// Rows a KV cache of `context` positions keeps for `layer`.
    public func kvRows(layer: Int, context: Int, step: Int) -> Int {
        isLocal(layer: layer) ? kvRingRows(context: context, step: step) ?? context : context
    }

    /// Rows of all layers together (saturating).
    public func kvRowsTotal(context: Int, step: Int) -> Int {
        let local = localLayerCount
        let ring = kvRingRows(context: context, step: step) ?? context
        return MemoryEstimate.sum(MemoryEstimate.product(local, ring), MemoryEstimate.product(blockCount - local, context))
    }

    /// The architectures Puna runs (`general.architecture`), from the registry.
    public static var supportedArchitectures: [String] { Architecture.all.map { $0.name } }

    public init(architecture: String = "llama", contextLength: Int, embeddingLength: Int, blockCount: Int,
                feedForwardLength: Int, headCount: Int, headCountKV: Int, headDimension: Int? = nil, ropeDimensionCount: Int,
                ropeFreqBase: Float = 10000, ropeScaleLinear: Float = 1, rmsNormEpsilon: Float = 1e-5, vocabSize: Int) {
        self.architecture = architecture
        self.contextLength = contextLength
        self.embeddingLength = embeddingLength
        self.blockCount = blockCount
        self.feedForwardLength = feedForwardLength
        self.headCount = headCount
        self.headCountKV = headCountKV
        self.headDimension = headDimension ?? embeddingLength / max(headCount, 1)
        self.ropeDimensionCount = ropeDimensionCount
        self.ropeFreqBase = ropeFreqBase
        self.ropeScaleLinear = ropeScaleLinear
        self.ropeStyle = Architecture.named(architecture)?.ropeStyle ?? .adjacentPairs
        self.norm = Architecture.named(architecture)?.norm ?? .rms
        self.feedForward = Architecture.named(architecture)?.feedForward ?? .swiglu
        self.rmsNormEpsilon = rmsNormEpsilon
        self.vocabSize = vocabSize
    }

    /// Read and validate the hyperparameters; errors name the missing or bad key.
    public init(gguf: GGUFFile) throws(PunaError) {
        guard let arch = gguf.architecture else {
            throw PunaError("\(gguf.path): missing key general.architecture")
        }
        guard let spec = Architecture.named(arch) else {
            throw PunaError("\(gguf.path): architecture '\(clipped(arch))' is not supported (Puna runs: \(ModelConfig.supportedArchitectures.joined(separator: ", ")))")
        }
        let keys = ConfigKeys(gguf: gguf, arch: arch)
        architecture = arch
        contextLength = try keys.required("context_length")
        embeddingLength = try keys.required("embedding_length")
        blockCount = try keys.required("block_count")
        feedForwardLength = try keys.required("feed_forward_length")
        headCount = try keys.required("attention.head_count")
        headCountKV = try keys.optional("attention.head_count_kv") ?? headCount
        guard headCount % headCountKV == 0 else {
            throw PunaError("\(gguf.path): \(arch).attention.head_count \(headCount) is not a multiple of \(arch).attention.head_count_kv \(headCountKV)")
        }
        if let keyLength = try keys.optional("attention.key_length") {
            headDimension = keyLength
        } else {
            guard embeddingLength % headCount == 0 else {
                throw PunaError("\(gguf.path): \(arch).embedding_length \(embeddingLength) is not a multiple of \(arch).attention.head_count \(headCount) (and there is no \(arch).attention.key_length)")
            }
            headDimension = embeddingLength / headCount
        }
        // K and V heads of one size: the KV cache and the attention kernel assume it.
        if let valueLength = try keys.optional("attention.value_length"), valueLength != headDimension {
            throw PunaError("\(gguf.path): \(arch).attention.value_length \(valueLength) differs from the key length \(headDimension), which Puna does not support")
        }
        guard headDimension % 2 == 0, headDimension <= 1 << 12, headCount <= 1 << 12 else {
            throw PunaError("\(gguf.path): head size \(headDimension) (\(arch).attention.key_length or embedding_length / head_count) must be even and at most 4096, with at most 4096 heads")
        }
        ropeDimensionCount = try keys.optional("rope.dimension_count") ?? headDimension
        guard ropeDimensionCount <= headDimension, ropeDimensionCount % 2 == 0 else {
            throw PunaError("\(gguf.path): \(arch).rope.dimension_count \(ropeDimensionCount) must be even and at most the head size \(headDimension)")
        }
        ropeFreqBase = try keys.float("rope.freq_base", 10000, 1...1e10)
        rmsNormEpsilon = try keys.float("attention.layer_norm_rms_epsilon", 1e-5, 1e-12...1)
        // A Hugging Face folder keeps Q/K rows in HF's order (the GGUF converter reorders them for
        // adjacent pairs): rotating head halves on that order is the same rotation.
        ropeStyle = gguf.isHuggingFaceFolder && spec.reordersQueryKeyRows ? .halves : spec.ropeStyle
        norm = spec.norm
        feedForward = spec.feedForward
        ropeScaleLinear = 1
        if let type = gguf.string("\(arch).rope.scaling.type"), type != "none" {
            // LongRoPE's files say nothing here or "longrope"; its factors are tensors (Phi3.swift).
            guard type == "linear" || (type == "longrope" && spec.readsLongRoPE) else {
                throw PunaError("\(gguf.path): \(arch).rope.scaling.type '\(clipped(type))' is not supported (only linear\(spec.readsLongRoPE ? " and longrope" : ""))")
            }
            if type == "linear" { ropeScaleLinear = try keys.float("rope.scaling.factor", 1, 1e-3...1e4) }
        }
        if let vocab = try keys.optional("vocab_size") {
            vocabSize = vocab
        } else if let tokens = gguf["tokenizer.ggml.tokens"]?.arrayValue {
            vocabSize = tokens.count
        } else if let embd = gguf.tensorInfo("token_embd.weight"), embd.shape.count == 2 {
            vocabSize = embd.shape[1]
        } else {
            throw PunaError("\(gguf.path): cannot tell the vocabulary size (no \(arch).vocab_size, tokenizer.ggml.tokens or token_embd.weight)")
        }
        try spec.readKeys(keys, &self)
        // Layers past block_count would be silently dropped: the file is inconsistent.
        for t in gguf.tensors where t.name.hasPrefix("blk.") {
            let digits = t.name.utf8.dropFirst(4).prefix { $0 >= 48 && $0 <= 57 }
            guard !digits.isEmpty else { continue }
            let layer = Int(String(decoding: digits, as: UTF8.self))  // nil: too many digits for any layer
            if layer.map({ $0 >= blockCount }) ?? true {
                throw PunaError("\(gguf.path): tensor '\(clipped(t.name))' belongs to a layer past \(arch).block_count = \(blockCount)")
            }
        }
    }
}

/// How RoPE pairs the dimensions of a head: adjacent pairs (2i, 2i+1), GGML's "normal" mode, for
/// files whose converter reordered Q/K rows (LLaMA); or halves (i, i + d/2), the checkpoint's own
/// order as Hugging Face's rotate_half computes it (Qwen, Phi-3, Gemma: GGML's "NEOX" mode).
public enum RopeStyle: Equatable {
    case adjacentPairs
    case halves
}

public enum NormKind: Equatable {
    case rms
    case layerNorm
}

/// The feed-forward block: down(act(gate) · up) with SiLU (LLaMA...) or tanh-GELU (Gemma), or
/// down(GELU(up)) without a gate (BLOOM).
public enum FeedForwardKind: Equatable {
    case swiglu
    case geglu
    case gelu
}

/// Reading `<arch>.*` keys with the checks every number from a file gets.
struct ConfigKeys {
    let gguf: GGUFFile
    let arch: String

    func key(_ name: String) -> String { "\(arch).\(name)" }

    /// A positive integer of sane size, or nil when the key is absent.
    func optional(_ name: String, max: Int = 1 << 30) throws(PunaError) -> Int? {
        guard let value = gguf[key(name)] else { return nil }
        guard let v = value.intValue, v > 0, v <= max else {
            throw PunaError("\(gguf.path): key \(key(name)) must be a positive integer of at most \(max)")
        }
        return v
    }

    /// A window size: absent or 0 means none.
    func window(_ name: String) throws(PunaError) -> Int {
        if let value = gguf[key(name)], value.intValue == 0 { return 0 }
        return try optional(name) ?? 0
    }

    func required(_ name: String) throws(PunaError) -> Int {
        guard let v = try optional(name) else { throw PunaError("\(gguf.path): missing key \(key(name))") }
        return v
    }

    /// Each number within what a real model uses, by orders of magnitude: outside, the forward
    /// pass computes infinities and NaN (a rope base of 1e-45 gives infinite frequencies).
    func float(_ name: String, _ fallback: Float, _ range: ClosedRange<Double>) throws(PunaError) -> Float {
        try optionalFloat(name, range) ?? fallback
    }

    func optionalFloat(_ name: String, _ range: ClosedRange<Double>) throws(PunaError) -> Float? {
        guard let value = gguf[key(name)] else { return nil }
        guard let v = value.doubleValue, v.isFinite, range.contains(v) else {
            throw PunaError("\(gguf.path): key \(key(name)) must be a number from \(range.lowerBound) to \(range.upperBound), found \(value.doubleValue.map { "\($0)" } ?? value.type.name)")
        }
        return Float(v)
    }
}
