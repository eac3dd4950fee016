import CPuna

/// Options for loading a model.
public struct ModelOptions {
    /// Worker threads (including the caller); 0 = one per CPU.
    public var threads: Int = 0
    /// Tokens evaluated per matrix × matrix step when processing a prompt.
    public var batchSize: Int = 256

    public init(threads: Int = 0, batchSize: Int = 256) {
        self.threads = threads
        self.batchSize = batchSize
    }
}

/// A LLaMA-family model from a GGUF file: weights memory-mapped, tokenizer from the file's
/// `tokenizer.ggml.*` keys. Evaluate tokens against a `KVCache` to get logits; see `Generator`
/// for text generation. (Members are internal, not private, so other files of PunaCore — batched
/// decoding, other backends — can extend the model.)
public final class LlamaModel {
    public let gguf: GGUFFile
    public let config: LlamaConfig
    public let tokenizer: Tokenizer
    public let threads: Int
    public let batchSize: Int

    let tokenEmbedding: Linear       // [vocab][n_embd]
    let layers: [Layer]
    let outputNorm: [Float]          // [n_embd]
    let output: Linear               // [vocab][n_embd], reading the embedding's bytes when tied
    let ropeFactors: [Float]?        // [rope_dims/2] from rope_freqs.weight, or linear scaling
    let pool: OpaquePointer
    let adapterState: AdapterState   // active LoRA adapters, shared with every Linear (LoRA.swift)
    var vulkan: VulkanBackend? = nil      // set by useVulkan: the forward pass runs on a Vulkan device (Vulkan.swift)
    /// What setting up the requested backend had to say: the Vulkan device in use, or why the
    /// model runs on the CPU instead. nil when the CPU was asked for.
    public internal(set) var backendNote: String? = nil

    struct Layer {
        let attentionNorm: [Float]           // [n_embd]
        let q: Linear                        // [n_embd][n_embd]
        let k: Linear                        // [kv_dim][n_embd]
        let v: Linear                        // [kv_dim][n_embd]
        let o: Linear                        // [n_embd][n_embd]
        let ffnNorm: [Float]                 // [n_embd]
        let gate: Linear                     // [n_ff][n_embd]
        let up: Linear                       // [n_ff][n_embd]
        let down: Linear                     // [n_embd][n_ff]
    }

    public convenience init(path: String, options: ModelOptions = ModelOptions()) throws(PunaError) {
        try self.init(gguf: GGUFFile(path: path), options: options)
    }

    public init(gguf: GGUFFile, options: ModelOptions = ModelOptions()) throws(PunaError) {
        self.gguf = gguf
        let c = try LlamaConfig(gguf: gguf)
        config = c
        tokenizer = try Tokenizer(gguf: gguf)
        guard tokenizer.vocabSize == c.vocabSize else {
            throw PunaError("\(gguf.path): tokenizer has \(tokenizer.vocabSize) tokens but the model's vocabulary is \(c.vocabSize)")
        }

        let adapterState = AdapterState()
        self.adapterState = adapterState
        func matrix(_ name: String, rows: Int, cols: Int) throws(PunaError) -> Linear {
            guard let t = gguf.tensorInfo(name) else { throw PunaError("\(gguf.path): missing tensor '\(name)'") }
            guard t.shape.count == 2 || (t.shape.count > 2 && t.shape.dropFirst(2).allSatisfy { $0 == 1 }),
                  t.shape[0] == cols, t.shape[1] == rows else {
                throw PunaError("\(gguf.path): tensor '\(name)' has shape \(t.shape), expected [\(cols), \(rows)]")
            }
            guard puna_matmul_supports(Int32(t.type.rawValue)) != 0, t.type.canDecode else {
                throw PunaError("\(gguf.path): tensor '\(name)' has type \(t.type.name), which Puna cannot compute with")
            }
            let linear = Linear(name: name, type: t.type, rows: rows, cols: cols, weights: gguf.data(of: t).baseAddress!)
            linear.adapterState = adapterState
            return linear
        }
        func vector(_ name: String, _ n: Int) throws(PunaError) -> [Float] {
            guard let t = gguf.tensorInfo(name) else { throw PunaError("\(gguf.path): missing tensor '\(name)'") }
            guard t.elementCount == n, t.shape[0] == n else {
                throw PunaError("\(gguf.path): tensor '\(name)' has shape \(t.shape), expected [\(n)]")
            }
            return try t.type.decode(gguf.data(of: t), count: n)
        }

        let e = c.embeddingLength, kv = c.kvDimension, ff = c.feedForwardLength, vocab = c.vocabSize
        tokenEmbedding = try matrix("token_embd.weight", rows: vocab, cols: e)
        var layers: [Layer] = []
        for i in 0..<c.blockCount {
            let p = "blk.\(i)."
            layers.append(Layer(
                attentionNorm: try vector(p + "attn_norm.weight", e),
                q: try matrix(p + "attn_q.weight", rows: e, cols: e),
                k: try matrix(p + "attn_k.weight", rows: kv, cols: e),
                v: try matrix(p + "attn_v.weight", rows: kv, cols: e),
                o: try matrix(p + "attn_output.weight", rows: e, cols: e),
                ffnNorm: try vector(p + "ffn_norm.weight", e),
                gate: try matrix(p + "ffn_gate.weight", rows: ff, cols: e),
                up: try matrix(p + "ffn_up.weight", rows: ff, cols: e),
                down: try matrix(p + "ffn_down.weight", rows: e, cols: ff)))
        }
        self.layers = layers
        outputNorm = try vector("output_norm.weight", e)
        if gguf.tensorInfo("output.weight") == nil {
            // Tied: the output head reads the embedding's bytes, but is its own matrix so that an
            // adapter (or a merge) can change one without the other.
            output = Linear(name: "output.weight", type: tokenEmbedding.type, rows: vocab, cols: e, weights: tokenEmbedding.weights)
            output.adapterState = adapterState
        } else {
            output = try matrix("output.weight", rows: vocab, cols: e)
        }

        let pairs = c.ropeDimensionCount / 2
        if gguf.tensorInfo("rope_freqs.weight") != nil {
            var f = try vector("rope_freqs.weight", pairs)
            if c.ropeScaleLinear != 1 { for i in 0..<pairs { f[i] *= c.ropeScaleLinear } }
            ropeFactors = f
        } else if c.ropeScaleLinear != 1 {
            ropeFactors = [Float](repeating: c.ropeScaleLinear, count: pairs)
        } else {
            ropeFactors = nil
        }

        threads = options.threads > 0 ? options.threads : Int(puna_cpu_count())
        batchSize = max(1, options.batchSize)
        guard let pool = puna_pool_create(Int32(threads)) else {
            throw PunaError("cannot start \(threads) worker threads")
        }
        self.pool = pool
        // Weights are read front to back once per token: ask the kernel to read ahead (MemoryEstimate.swift).
        adviseForLoading()
    }

    deinit { puna_pool_destroy(pool) }

    /// A KV cache for up to `contextLength` positions (default: the trained context).
    public func makeCache(contextLength: Int? = nil, type: GGMLType = .f16) throws(PunaError) -> KVCache {
        let n = contextLength ?? config.contextLength
        guard n > 0 else { throw PunaError("context length must be positive") }
        return try KVCache(layers: config.blockCount, capacity: n, kvDimension: config.kvDimension, type: type)
    }

    /// Run `tokens` through the model after the positions already in `cache`, append their keys and
    /// values, and return logits: of the last token ([n_vocab]) or of every token ([n_tokens][n_vocab]).
    public func evaluate(_ tokens: [Int32], cache: KVCache, allLogits: Bool = false) throws(PunaError) -> [Float] {
        guard !tokens.isEmpty else { throw PunaError("no tokens to evaluate") }
        for t in tokens where t < 0 || Int(t) >= config.vocabSize {
            throw PunaError("token id \(t) is out of range (vocabulary has \(config.vocabSize) tokens)")
        }
        guard cache.count + tokens.count <= cache.capacity else {
            throw PunaError("context full: \(cache.count) + \(tokens.count) tokens exceed the context length \(cache.capacity) (raise -c)")
        }
        let vocab = config.vocabSize
        var logits = [Float](repeating: 0, count: allLogits ? tokens.count * vocab : vocab)
        var start = 0
        var failure: PunaError? = nil
        while start < tokens.count && failure == nil {
            let n = min(batchSize, tokens.count - start)
            let isLast = start + n == tokens.count
            logits.withUnsafeMutableBufferPointer { out in
                let destination: UnsafeMutablePointer<Float>? = allLogits ? out.baseAddress! + start * vocab : (isLast ? out.baseAddress! : nil)
                if let vulkan {
                    failure = vulkan.forward(self, Array(tokens[start..<start + n]), cache: cache, logits: destination, allLogits: allLogits)
                } else {
                    do throws(PunaError) {
                        try forward(Array(tokens[start..<start + n]), cache: cache, logits: destination, allLogits: allLogits)
                    } catch {
                        failure = error
                    }
                }
            }
            start += n
        }
        if let failure { throw failure }
        return logits
    }

    /// One batch of tokens through every layer. Writes logits of all tokens (allLogits) or of the
    /// last one to `logits` when it is not nil.
    func forward(_ tokens: [Int32], cache: KVCache, logits: UnsafeMutablePointer<Float>?, allLogits: Bool) throws(PunaError) {
        let c = config
        let n = tokens.count, e = c.embeddingLength, kvd = c.kvDimension, ff = c.feedForwardLength
        let pos0 = cache.count
        let x = Buffer(n * e)       // [n][e] residual stream
        let xb = Buffer(n * e)      // [n][e] normed input of a sub-block
        let q = Buffer(n * e)       // [n][e] queries
        let k = Buffer(n * kvd)     // [n][kvd] keys of the new tokens
        let v = Buffer(n * kvd)     // [n][kvd] values of the new tokens
        let att = Buffer(n * e)     // [n][e] attention output
        let gate = Buffer(n * ff)   // [n][ff]
        let up = Buffer(n * ff)     // [n][ff]

        for (t, token) in tokens.enumerated() { tokenEmbedding.decodeRow(Int(token), into: x.p + t * e) }
        if !adapterState.active.isEmpty { try addEmbeddingAdapterDeltas(tokens, into: x.p, adapters: nil) }

        for (l, layer) in layers.enumerated() {
            // attention
            for t in 0..<n { puna_rmsnorm(xb.p + t * e, x.p + t * e, layer.attentionNorm, Int64(e), c.rmsNormEpsilon) }
            try forwardSharingInput([layer.q, layer.k, layer.v], xb.p, [q.p, k.p, v.p], nTokens: n)
            for t in 0..<n {
                rope(q.p + t * e, heads: c.headCount, position: pos0 + t)
                rope(k.p + t * kvd, heads: c.headCountKV, position: pos0 + t)
            }
            cache.store(layer: l, start: pos0, n: n, keys: k.p, values: v.p)
            try kernelStatus(puna_attention(pool, att.p, q.p, Int32(cache.type.rawValue),
                                            cache.keyRow(layer: l, position: 0), cache.valueRow(layer: l, position: 0),
                                            Int64(cache.rowBytes), Int32(n), Int32(pos0), Int32(c.headCount),
                                            Int32(c.headCountKV), Int32(c.headDimension), nil, Int32(cache.capacity)),
                             "puna_attention of layer \(l)")
            try layer.o.forward(pool, att.p, xb.p, nTokens: n)
            puna_add(x.p, x.p, xb.p, Int64(n * e))

            // feed-forward (SwiGLU)
            for t in 0..<n { puna_rmsnorm(xb.p + t * e, x.p + t * e, layer.ffnNorm, Int64(e), c.rmsNormEpsilon) }
            try forwardSharingInput([layer.gate, layer.up], xb.p, [gate.p, up.p], nTokens: n)
            puna_swiglu(gate.p, gate.p, up.p, Int64(n * ff))
            try layer.down.forward(pool, gate.p, xb.p, nTokens: n)
            puna_add(x.p, x.p, xb.p, Int64(n * e))
        }
        cache.count = pos0 + n

        guard let logits else { return }
        // Only the rows whose logits are wanted go through the final norm and output matrix.
        let first = allLogits ? 0 : n - 1
        for t in first..<n { puna_rmsnorm(xb.p + t * e, x.p + t * e, outputNorm, Int64(e), c.rmsNormEpsilon) }
        try output.forward(pool, xb.p + first * e, logits, nTokens: n - first)
    }

    /// Matrices that read the same input (Q, K, V; gate, up): one pool run for all of them (ops.c
    /// puna_matmul_many, same bits as one by one), with the active adapters' deltas too when
    /// decoding one token (puna_lora_matmul_many1); other adapter cases go one by one.
    func forwardSharingInput(_ matrices: [Linear], _ x: UnsafePointer<Float>, _ ys: [UnsafeMutablePointer<Float>], nTokens: Int) throws(PunaError) {
        guard adapterState.active.isEmpty else {
            if nTokens == 1 && Linear.forwardOneTokenWithAdapters(matrices, pool, x, ys) { return }
            for (m, y) in zip(matrices, ys) { try m.forward(pool, x, y, nTokens: nTokens) }
            return
        }
        let types = matrices.map { Int32($0.type.rawValue) }
        let weights: [UnsafeRawPointer?] = matrices.map { $0.weights }
        let rows = matrices.map { Int64($0.rows) }
        let outputs: [UnsafeMutablePointer<Float>?] = ys.map { $0 }
        try kernelStatus(puna_matmul_many(pool, Int32(matrices.count), types, weights, rows, Int64(matrices[0].cols), x, Int64(nTokens), outputs),
                         "puna_matmul_many of \(matrices.map { $0.name }.joined(separator: ", "))")
    }

    func rope(_ vec: UnsafeMutablePointer<Float>, heads: Int, position: Int) {
        let c = config
        if let factors = ropeFactors {
            puna_rope_factors(vec, Int32(heads), Int32(c.headDimension), Int32(c.ropeDimensionCount), Int32(position), c.ropeFreqBase, factors)
        } else {
            puna_rope(vec, Int32(heads), Int32(c.headDimension), Int32(c.ropeDimensionCount), Int32(position), c.ropeFreqBase)
        }
    }
}

/// A scratch buffer of floats, freed when it goes out of scope.
final class Buffer {
    let p: UnsafeMutablePointer<Float>
    let count: Int

    init(_ count: Int) {
        self.count = count
        p = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
        p.initialize(repeating: 0, count: max(count, 1))
    }

    deinit { p.deallocate() }
}
