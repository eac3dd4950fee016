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

/// A decoder-only transformer from a GGUF file, of any architecture in `Architecture.all`: weights
/// memory-mapped, tokenizer from the file's `tokenizer.ggml.*` keys. Evaluate tokens against a
/// `KVCache` to get logits; see `Generator` for text generation. (Members are internal, not
/// private, so other files of PunaCore — batched decoding, LoRA, other backends — extend the model.)
public final class LanguageModel {
    public let gguf: GGUFFile
    public let config: ModelConfig
    let architecture: Architecture
    public let tokenizer: Tokenizer
    public let threads: Int
    public let batchSize: Int

    let tokenEmbedding: Linear       // [vocab][n_embd]
    let tokenEmbeddingNorm: Norm?    // [n_embd]: LayerNorm right after the embedding (BLOOM)
    // @_spi(Testing): reachable from the test target without @testable, so the release test run reuses the release build.
    @_spi(Testing) public let layers: [Layer]
    let outputNorm: Norm             // [n_embd]
    let alibiSlopes: [Float]?        // [n_heads] (BLOOM)
    @_spi(Testing) public let output: Linear  // [vocab][n_embd], reading the embedding's bytes when tied
    let ropeFactors: [Float]?        // [rope_dims/2]: rope_freqs.weight (Llama 3.1+), or linear scaling
    let longRoPEFactors: (short: [Float], long: [Float])?   // [rope_dims/2] each (Phi-3's LongRoPE)
    @_spi(Testing) public let pool: OpaquePointer
    let adapterState: AdapterState   // active LoRA adapters, shared with every Linear (LoRA.swift)
    var vulkan: VulkanBackend? = nil      // set by useVulkan: the forward pass runs on a Vulkan device (Vulkan.swift)
    /// What setting up the requested backend had to say: the Vulkan device in use, or why the
    /// model runs on the CPU instead. nil when the CPU was asked for.
    public internal(set) var backendNote: String? = nil

    /// One transformer block. Which of the optional parts a layer has is its architecture's choice
    /// (Architectures/); the forward pass below handles every combination.
    @_spi(Testing) public struct Layer {
        let attentionNorm: Norm              // [n_embd]
        @_spi(Testing) public let q: Linear?  // [q_dim][n_embd] (+ bias [q_dim])
        let k: Linear?                       // [kv_dim][n_embd] (+ bias)
        let v: Linear?                       // [kv_dim][n_embd] (+ bias)
        let qkv: Linear?                     // [q_dim + 2 kv_dim][n_embd]: Q, K, V in one (instead of q, k, v)
        let queryNorm: [Float]?              // [head_dim]: RMSNorm of each query head before RoPE
        let keyNorm: [Float]?                // [head_dim]
        let o: Linear                        // [n_embd][q_dim]
        let attentionPostNorm: Norm?         // [n_embd]: on the attention output before the residual add (Gemma)
        let ffnNorm: Norm                    // [n_embd]
        let gate: Linear?                    // [n_ff][n_embd]; nil when up holds gate and up, or without gate (BLOOM)
        let up: Linear                       // [n_ff][n_embd], or [2 n_ff][n_embd]: gate rows, then up rows
        @_spi(Testing) public let down: Linear  // [n_embd][n_ff]
        let ffnPostNorm: Norm?               // [n_embd]
        let attentionWindow: Int             // 0, or the sliding window of a local layer
        let ropeFreqBase: Float              // this layer's RoPE base (Gemma 3's local layers have their own)
        let ropeScaled: Bool                 // whether the model's frequency factors apply to this layer

        /// The matrices in computing order (LoRA targets, merges, uploads).
        var matrices: [Linear] {
            var all: [Linear] = []
            for m in [q, k, v, qkv] { if let m { all.append(m) } }
            all.append(o)
            if let gate { all.append(gate) }
            all += [up, down]
            return all
        }
    }

    public convenience init(path: String, options: ModelOptions = ModelOptions()) throws(PunaError) {
        try self.init(gguf: GGUFFile(path: path), options: options)
    }

    public init(gguf: GGUFFile, options: ModelOptions = ModelOptions()) throws(PunaError) {
        self.gguf = gguf
        let c = try ModelConfig(gguf: gguf)
        config = c
        architecture = Architecture.named(c.architecture)!
        tokenizer = try Tokenizer(gguf: gguf)
        guard tokenizer.vocabSize == c.vocabSize else {
            throw PunaError("\(gguf.path): tokenizer has \(tokenizer.vocabSize) tokens but the model's vocabulary is \(c.vocabSize)")
        }

        let adapterState = AdapterState()
        self.adapterState = adapterState
        let arch = architecture
        func vector(_ name: String, _ n: Int) throws(PunaError) -> [Float] {
            guard let t = gguf.tensorInfo(name) else { throw PunaError("\(gguf.path): missing tensor '\(name)' (\(arch.name) needs it)") }
            guard t.elementCount == n, t.shape[0] == n else {
                throw PunaError("\(gguf.path): tensor '\(name)' has shape \(t.shape), expected [\(n)]")
            }
            guard t.type.canDecode else { throw PunaError("\(gguf.path): tensor '\(name)' has type \(t.type.name), which Puna cannot decode") }
            return try t.type.decode(gguf.data(of: t), count: n)
        }
        func matrix(_ name: String, rows: Int, cols: Int, bias: String? = nil) throws(PunaError) -> Linear {
            guard let t = gguf.tensorInfo(name) else { throw PunaError("\(gguf.path): missing tensor '\(name)' (\(arch.name) needs it)") }
            guard t.shape.count == 2 || (t.shape.count > 2 && t.shape.dropFirst(2).allSatisfy { $0 == 1 }),
                  t.shape[0] == cols, t.shape[1] == rows else {
                throw PunaError("\(gguf.path): tensor '\(name)' has shape \(t.shape), expected [\(cols), \(rows)]")
            }
            let weights: UnsafeRawPointer
            if t.type.isBitsAndBytes {
                guard let d = gguf.bitsAndBytes?.descriptor(name) else { throw PunaError("internal error: no bitsandbytes descriptor for '\(name)'") }
                weights = d
            } else {
                guard puna_matmul_supports(Int32(t.type.rawValue)) != 0, t.type.canDecode else {
                    throw PunaError("\(gguf.path): tensor '\(name)' has type \(t.type.name), which Puna cannot compute with")
                }
                weights = gguf.data(of: t).baseAddress!
            }
            let b: [Float]? = bias == nil || gguf.tensorInfo(bias!) == nil ? nil : try vector(bias!, rows)
            let linear = Linear(name: name, type: t.type, rows: rows, cols: cols, weights: weights, bias: b)
            linear.adapterState = adapterState
            return linear
        }

        func norm(_ prefix: String, required: Bool = true) throws(PunaError) -> Norm? {
            guard required || gguf.tensorInfo(prefix + ".weight") != nil else { return nil }
            let bias = c.norm == .layerNorm ? try vector(prefix + ".bias", e) : nil
            return Norm(weight: try vector(prefix + ".weight", e), bias: bias)
        }

        let e = c.embeddingLength, qd = c.queryDimension, kv = c.kvDimension, ff = c.feedForwardLength, vocab = c.vocabSize
        tokenEmbedding = try matrix("token_embd.weight", rows: vocab, cols: e)
        tokenEmbeddingNorm = c.norm == .layerNorm ? try norm("token_embd_norm", required: gguf.tensorInfo("token_embd_norm.weight") != nil) : nil
        var layers: [Layer] = []
        for i in 0..<c.blockCount {
            let p = "blk.\(i)."
            func has(_ t: LayerTensor) -> Bool { gguf.tensorInfo(p + t.name) != nil }
            for t in arch.requiredLayerTensors where !has(t) {
                throw PunaError("\(gguf.path): missing tensor '\(p + t.name)' (\(arch.name) needs it)")
            }
            // Tensors the architecture has no use for would be silently ignored: refuse them.
            for t in LayerTensor.optionalParts where has(t) {
                guard arch.requiredLayerTensors.contains(t) || arch.optionalLayerTensors.contains(t) else {
                    throw PunaError("\(gguf.path): tensor '\(p + t.name)' is not part of Puna's \(arch.name) architecture")
                }
            }
            let fusedQKV = has(.fusedQKV)
            let fusedGateUp = !has(.gate) && c.feedForward != .gelu
            let local = c.isLocal(layer: i)
            layers.append(Layer(
                attentionNorm: try norm(p + "attn_norm")!,
                q: fusedQKV ? nil : try matrix(p + LayerTensor.query.name, rows: qd, cols: e, bias: p + LayerTensor.queryBias.name),
                k: fusedQKV ? nil : try matrix(p + LayerTensor.key.name, rows: kv, cols: e, bias: p + LayerTensor.keyBias.name),
                v: fusedQKV ? nil : try matrix(p + LayerTensor.value.name, rows: kv, cols: e, bias: p + LayerTensor.valueBias.name),
                qkv: fusedQKV ? try matrix(p + LayerTensor.fusedQKV.name, rows: qd + 2 * kv, cols: e, bias: p + LayerTensor.fusedQKVBias.name) : nil,
                queryNorm: has(.queryNorm) ? try vector(p + LayerTensor.queryNorm.name, c.headDimension) : nil,
                keyNorm: has(.keyNorm) ? try vector(p + LayerTensor.keyNorm.name, c.headDimension) : nil,
                o: try matrix(p + LayerTensor.output.name, rows: e, cols: qd, bias: p + LayerTensor.outputBias.name),
                attentionPostNorm: has(.attentionPostNorm) ? try norm(p + "post_attention_norm") : nil,
                ffnNorm: try norm(p + "ffn_norm")!,
                gate: fusedGateUp || c.feedForward == .gelu ? nil : try matrix(p + LayerTensor.gate.name, rows: ff, cols: e),
                up: try matrix(p + LayerTensor.up.name, rows: fusedGateUp ? 2 * ff : ff, cols: e, bias: p + LayerTensor.upBias.name),
                down: try matrix(p + LayerTensor.down.name, rows: e, cols: ff, bias: p + LayerTensor.downBias.name),
                ffnPostNorm: has(.ffnPostNorm) ? try norm(p + "post_ffw_norm") : nil,
                attentionWindow: c.attentionWindow(layer: i),
                ropeFreqBase: local ? c.localRopeFreqBase ?? c.ropeFreqBase : c.ropeFreqBase,
                ropeScaled: !(local && c.localRopeFreqBase != nil)))
        }
        self.layers = layers
        outputNorm = try norm("output_norm")!
        if let maxBias = c.alibiMaxBias {
            alibiSlopes = LanguageModel.alibiSlopes(heads: c.headCount, maxBias: maxBias)
        } else {
            alibiSlopes = nil
        }
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
        let hasShort = gguf.tensorInfo("rope_factors_short.weight") != nil, hasLong = gguf.tensorInfo("rope_factors_long.weight") != nil
        if hasShort || hasLong {
            guard arch.readsLongRoPE else {
                throw PunaError("\(gguf.path): LongRoPE factor tensors (rope_factors_short/long.weight) are not part of Puna's \(arch.name) architecture")
            }
            longRoPEFactors = (try vector("rope_factors_short.weight", pairs), try vector("rope_factors_long.weight", pairs))
        } else {
            longRoPEFactors = nil
        }
        for f in [ropeFactors, longRoPEFactors?.short, longRoPEFactors?.long] {
            guard let f else { continue }
            // A factor divides the angle: zero, negative or non-finite factors give NaN logits.
            guard f.allSatisfy({ $0.isFinite && $0 > 0 && $0 < 1e6 }) else {
                throw PunaError("\(gguf.path): RoPE frequency factors must be positive finite numbers below 1e6")
            }
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
        let rings = (0..<config.blockCount).map { config.isLocal(layer: $0) ? config.kvRows(layer: $0, context: n, step: batchSize) : 0 }
        return try KVCache(layers: config.blockCount, capacity: n, kvDimension: config.kvDimension, type: type, ringRows: rings)
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
        guard cache.layers == config.blockCount, cache.kvDimension == config.kvDimension else {
            throw PunaError("the KV cache was made for a different model (use model.makeCache)")
        }
        try cache.checkCanContinue(tokens: min(tokens.count, batchSize), window: config.slidingWindow)
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

    /// One batch of tokens of one sequence through every layer. Writes logits of all tokens
    /// (allLogits) or of the last one to `logits` when it is not nil.
    func forward(_ tokens: [Int32], cache: KVCache, logits: UnsafeMutablePointer<Float>?, allLogits: Bool) throws(PunaError) {
        let n = tokens.count, e = config.embeddingLength
        let x = Buffer(n * e)       // [n][e] residual stream
        for (t, token) in tokens.enumerated() { tokenEmbedding.decodeRow(Int(token), into: x.p + t * e) }
        if !adapterState.active.isEmpty { try addEmbeddingAdapterDeltas(tokens, into: x.p, adapters: nil) }
        prepareEmbeddings(x, rows: n)
        let sequence = SequenceRows(cache: cache, firstRow: 0, count: n)
        try forwardLayers(x, rows: n, sequences: [sequence], layers: 0..<layers.count, adapters: nil)
        for s in [sequence] { s.cache.count += s.count }
        guard let logits else { return }
        // Only the rows whose logits are wanted go through the final norm and output matrix.
        try forwardOutput(x, rows: allLogits ? Array(0..<n) : [n - 1], logits: logits, adapters: nil)
    }

    /// The rows of one sequence in a step: `count` rows from `firstRow`, at the positions after
    /// those already in `cache`.
    struct SequenceRows {
        let cache: KVCache
        let firstRow: Int
        let count: Int
    }

    /// The layers in `range` over a step's rows: `x` ([rows][n_embd], the residual stream) is
    /// updated in place. Every projection runs once over all rows (each weight matrix read once per
    /// step); attention runs per sequence, over its rows and its cache. `adapters[r]` is row r's
    /// LoRA set, nil for the model's active set on every row. The single-sequence forward, batched
    /// decoding and the CPU layers of a partial GPU offload all run this loop.
    func forwardLayers(_ x: Buffer, rows n: Int, sequences: [SequenceRows], layers range: Range<Int>,
                       adapters: [AdapterSet]?) throws(PunaError) {
        let c = config
        let e = c.embeddingLength, qd = c.queryDimension, kvd = c.kvDimension, ff = c.feedForwardLength, hd = c.headDimension
        let xb = Buffer(n * e)      // [n][e] normed input of a sub-block, then a sub-block's output
        let q = Buffer(n * qd)      // [n][q_dim] queries
        let k = Buffer(n * kvd)     // [n][kv_dim] keys of the new tokens
        let v = Buffer(n * kvd)     // [n][kv_dim] values of the new tokens
        let att = Buffer(n * qd)    // [n][q_dim] attention output
        let gate = Buffer(n * ff)   // [n][ff]
        let up = Buffer(n * ff)     // [n][ff]
        let fusedGateUp = c.feedForward != .gelu && layers.contains { $0.gate == nil }   // BLOOM's FFN has no gate at all
        let fusedWidth = max(layers.contains { $0.qkv != nil } ? qd + 2 * kvd : 0, fusedGateUp ? 2 * ff : 0)
        let fused = Buffer(n * fusedWidth)   // [n][q_dim + 2 kv_dim] or [n][2 ff]: a fused matrix's output before the split
        var positions: [Int] = []   // position of every row
        for s in sequences { for t in 0..<s.count { positions.append(s.cache.count + t) } }
        let attentionScale = c.attentionScale ?? 1 / Float(hd).squareRoot()

        for l in range {
            let layer = layers[l]
            // attention: Q, K, V over all rows (three matrices, or one fused that is split per row)
            for r in 0..<n { layer.attentionNorm.apply(xb.p + r * e, x.p + r * e, e, c) }
            if let qkv = layer.qkv {
                try qkv.forward(pool, xb.p, fused.p, nTokens: n, adapters: adapters)
                split(fused, width: qd + 2 * kvd, rows: n, into: [(q, qd), (k, kvd), (v, kvd)])
            } else {
                try Linear.forward([layer.q!, layer.k!, layer.v!], pool, xb.p, [q.p, k.p, v.p], nTokens: n, adapters: adapters)
            }
            for r in 0..<n {
                if let norm = layer.queryNorm { for h in 0..<c.headCount { puna_rmsnorm(q.p + r * qd + h * hd, q.p + r * qd + h * hd, norm, Int64(hd), c.rmsNormEpsilon) } }
                if let norm = layer.keyNorm { for h in 0..<c.headCountKV { puna_rmsnorm(k.p + r * kvd + h * hd, k.p + r * kvd + h * hd, norm, Int64(hd), c.rmsNormEpsilon) } }
            }
            if alibiSlopes == nil {
                for s in sequences {
                    for r in s.firstRow..<s.firstRow + s.count {
                        rope(q.p + r * qd, heads: c.headCount, position: positions[r], context: s.cache.capacity, layer: layer)
                        rope(k.p + r * kvd, heads: c.headCountKV, position: positions[r], context: s.cache.capacity, layer: layer)
                    }
                }
            }
            for s in sequences {
                let r0 = s.firstRow, cache = s.cache, pos0 = cache.count
                cache.store(layer: l, start: pos0, n: s.count, keys: k.p + r0 * kvd, values: v.p + r0 * kvd)
                let status = withOptionalBuffer(alibiSlopes) { slopes -> Int32 in
                    var options = puna_attention_options(scale: attentionScale, window: Int32(layer.attentionWindow), softcap: c.attentionSoftcap,
                                                         ring_rows: Int32(cache.ringRows[l]), alibi_slopes: slopes)
                    return puna_attention_ex(pool, att.p + r0 * qd, q.p + r0 * qd, Int32(cache.type.rawValue),
                                             cache.keyRow(layer: l, position: 0), cache.valueRow(layer: l, position: 0),
                                             Int64(cache.rowBytes), Int32(s.count), Int32(pos0), Int32(c.headCount),
                                             Int32(c.headCountKV), Int32(hd), nil, Int32(cache.capacity), &options)
                }
                try kernelStatus(status, "puna_attention of layer \(l)")
            }
            try layer.o.forward(pool, att.p, xb.p, nTokens: n, adapters: adapters)
            if let post = layer.attentionPostNorm { for r in 0..<n { post.apply(xb.p + r * e, xb.p + r * e, e, c) } }
            puna_add(x.p, x.p, xb.p, Int64(n * e))

            // feed-forward: SwiGLU / GeGLU with gate and up as two matrices or one fused (split per
            // row), or GELU(up) without gate
            for r in 0..<n { layer.ffnNorm.apply(xb.p + r * e, x.p + r * e, e, c) }
            switch c.feedForward {
            case .gelu:
                try layer.up.forward(pool, xb.p, gate.p, nTokens: n, adapters: adapters)
                puna_gelu(gate.p, gate.p, Int64(n * ff))
            case .swiglu, .geglu:
                if let g = layer.gate {
                    try Linear.forward([g, layer.up], pool, xb.p, [gate.p, up.p], nTokens: n, adapters: adapters)
                } else {
                    try layer.up.forward(pool, xb.p, fused.p, nTokens: n, adapters: adapters)
                    split(fused, width: 2 * ff, rows: n, into: [(gate, ff), (up, ff)])
                }
                if c.feedForward == .swiglu { puna_swiglu(gate.p, gate.p, up.p, Int64(n * ff)) } else { puna_geglu(gate.p, gate.p, up.p, Int64(n * ff)) }
            }
            try layer.down.forward(pool, gate.p, xb.p, nTokens: n, adapters: adapters)
            if let post = layer.ffnPostNorm { for r in 0..<n { post.apply(xb.p + r * e, xb.p + r * e, e, c) } }
            puna_add(x.p, x.p, xb.p, Int64(n * e))
        }
    }

    /// Token embeddings as the layers take them: scaled (Gemma) and normed (BLOOM).
    func prepareEmbeddings(_ x: Buffer, rows n: Int) {
        let e = config.embeddingLength
        if config.embeddingScale != 1 { puna_scale(x.p, Int64(n * e), config.embeddingScale) }
        if let norm = tokenEmbeddingNorm { for r in 0..<n { norm.apply(x.p + r * e, x.p + r * e, e, config) } }
    }

    /// Final norm and output matrix for the given rows of `x`; logits [rows.count][n_vocab].
    func forwardOutput(_ x: Buffer, rows: [Int], logits: UnsafeMutablePointer<Float>, adapters: [AdapterSet]?) throws(PunaError) {
        let e = config.embeddingLength
        let xb = Buffer(rows.count * e)   // [wanted][e], gathered so the output matrix is read once
        for (i, r) in rows.enumerated() { outputNorm.apply(xb.p + i * e, x.p + r * e, e, config) }
        try output.forward(pool, xb.p, logits, nTokens: rows.count, adapters: adapters)
        if config.finalLogitSoftcap > 0 { puna_softcap(logits, Int64(rows.count * config.vocabSize), config.finalLogitSoftcap) }
    }

    /// Rows of a fused product ([rows][width]) into the parts' buffers ([rows][part width] each).
    private func split(_ fused: Buffer, width: Int, rows: Int, into parts: [(Buffer, Int)]) {
        for r in 0..<rows {
            var offset = 0
            for (buffer, w) in parts {
                (buffer.p + r * w).update(from: fused.p + r * width + offset, count: w)
                offset += w
            }
        }
    }

    /// RoPE of `heads` heads of one row at `position`, in the architecture's pairing, with the
    /// frequency factors that apply to a cache of `context` positions.
    func rope(_ vec: UnsafeMutablePointer<Float>, heads: Int, position: Int, context: Int, layer: Layer) {
        let c = config
        let style = Int32(c.ropeStyle == .halves ? PUNA_ROPE_NEOX : PUNA_ROPE_NORMAL)
        let factors = layer.ropeScaled ? ropeFactors(context: context) : nil
        withOptionalBuffer(factors) {
            puna_rope_ex(vec, Int32(heads), Int32(c.headDimension), Int32(c.ropeDimensionCount), Int32(position), layer.ropeFreqBase,
                         $0, style, c.ropeAttentionFactor)
        }
    }

    /// ALiBi slopes as BLOOM defines them: for the largest power of two n ≤ heads, head h < n gets
    /// 2^(−maxBias/n·(h+1)); the rest take every other slope of the next power of two.
    static func alibiSlopes(heads: Int, maxBias: Float) -> [Float] {
        var n = 1
        while n * 2 <= heads { n *= 2 }
        let m0 = puna_pow(2, -Double(maxBias) / Double(n)), m1 = puna_pow(2, -Double(maxBias) / 2 / Double(n))
        var slopes: [Float] = []
        for h in 0..<heads {
            slopes.append(Float(h < n ? puna_pow(m0, Double(h + 1)) : puna_pow(m1, Double(2 * (h - n) + 1))))
        }
        return slopes
    }

    /// The per-pair frequency divisors for a cache of `context` positions: LongRoPE's short factors
    /// while the context fits the original one, its long factors beyond (llama.cpp's choice; the
    /// cached keys keep the factors they were rotated with); else rope_freqs / linear scaling.
    func ropeFactors(context: Int) -> [Float]? {
        if let f = longRoPEFactors {
            return context > config.ropeOriginalContext && config.ropeOriginalContext > 0 ? f.long : f.short
        }
        return ropeFactors
    }
}

/// A norm's weights: RMSNorm (weight only) or LayerNorm (weight and bias), by the model's `NormKind`.
struct Norm {
    let weight: [Float]
    let bias: [Float]?

    func apply(_ out: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ n: Int, _ c: ModelConfig) {
        switch c.norm {
        case .rms: puna_rmsnorm(out, x, weight, Int64(n), c.rmsNormEpsilon)
        case .layerNorm: withOptionalBuffer(bias) { puna_layernorm(out, x, weight, $0, Int64(n), c.rmsNormEpsilon) }
        }
    }
}

/// `body` with the array's base address, or nil for no array.
func withOptionalBuffer<R>(_ values: [Float]?, _ body: (UnsafePointer<Float>?) -> R) -> R {
    guard let values else { return body(nil) }
    return values.withUnsafeBufferPointer { body($0.baseAddress) }
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
