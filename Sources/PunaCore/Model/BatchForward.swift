import CPuna

/// One sequence's share of a batched forward step: the new tokens to append to `cache` (one
/// sampled token while decoding, a chunk of the prompt while prefilling), whether the logits of
/// its last token are wanted, and the LoRA adapters of this sequence (nil: the model's active set).
public struct BatchSlice {
    public let cache: KVCache
    public let tokens: [Int32]
    public let wantsLogits: Bool
    public let adapters: AdapterSet?

    public init(cache: KVCache, tokens: [Int32], wantsLogits: Bool, adapters: AdapterSet? = nil) {
        self.cache = cache
        self.tokens = tokens
        self.wantsLogits = wantsLogits
        self.adapters = adapters
    }
}

extension LlamaModel {
    /// One forward step over several independent sequences, each with its own KV cache. All new
    /// tokens are stacked into one [rows][n_embd] matrix, so every weight matrix is read once per
    /// step however many sequences take part; only attention runs per sequence, over that
    /// sequence's rows and cache. Sequences with different adapters share the step: the base
    /// product is batched and each adapter's low-rank update is added to its own sequences' rows.
    ///
    /// Returns the logits of the last token of each slice that wants them, [wanted][n_vocab] in
    /// slice order. A row's arithmetic does not depend on the other rows of the step (the matmul
    /// contract in puna_kernels.h), so a sequence gets the same logits, bit for bit, as from
    /// `evaluate` on its own.
    public func evaluateBatch(_ slices: [BatchSlice]) throws(PunaError) -> [Float] {
        try validateBatch(slices)
        let wanted = slices.reduce(0) { $0 + ($1.wantsLogits ? 1 : 0) }
        var logits = [Float](repeating: 0, count: wanted * config.vocabSize)
        try logits.withUnsafeMutableBufferPointer { (out: inout UnsafeMutableBufferPointer<Float>) throws(PunaError) in
            try forwardBatch(slices, logits: out.baseAddress!)
        }
        return logits
    }

    /// The checks `evaluateBatch` makes before touching any cache.
    func validateBatch(_ slices: [BatchSlice]) throws(PunaError) {
        guard !slices.isEmpty else { throw PunaError("no sequences to evaluate") }
        for (i, s) in slices.enumerated() {
            guard !s.tokens.isEmpty else { throw PunaError("batch sequence \(i) has no tokens to evaluate") }
            for t in s.tokens where t < 0 || Int(t) >= config.vocabSize {
                throw PunaError("token id \(t) is out of range (vocabulary has \(config.vocabSize) tokens)")
            }
            guard s.cache.count + s.tokens.count <= s.cache.capacity else {
                throw PunaError("context full: \(s.cache.count) + \(s.tokens.count) tokens exceed the context length \(s.cache.capacity) (raise -c)")
            }
            guard s.cache.layers == config.blockCount, s.cache.kvDimension == config.kvDimension else {
                throw PunaError("batch sequence \(i): the KV cache was made for a different model")
            }
            // Two slices on one cache would both write the same positions.
            for j in 0..<i where slices[j].cache === s.cache {
                throw PunaError("batch sequences \(j) and \(i) share one KV cache")
            }
        }
    }

    /// The step itself (inputs already validated). Writes the wanted logits rows to `logits`.
    func forwardBatch(_ slices: [BatchSlice], logits: UnsafeMutablePointer<Float>) throws(PunaError) {
        let c = config
        let e = c.embeddingLength, kvd = c.kvDimension, ff = c.feedForwardLength
        // Row ranges and positions of each sequence in the stacked matrix.
        var rowStart: [Int] = []
        var positions: [Int] = []   // position of every row
        var n = 0
        for s in slices {
            rowStart.append(n)
            for t in 0..<s.tokens.count { positions.append(s.cache.count + t) }
            n += s.tokens.count
        }
        // Adapters of every row (nil when no row has any, the common case: nothing to add).
        var rowAdapters: [AdapterSet]? = nil
        var logitAdapters: [AdapterSet]? = nil
        if slices.contains(where: { !($0.adapters ?? activeAdapters).isEmpty }) {
            var rows: [AdapterSet] = [], heads: [AdapterSet] = []
            for s in slices {
                let set = s.adapters ?? activeAdapters
                for _ in 0..<s.tokens.count { rows.append(set) }
                if s.wantsLogits { heads.append(set) }
            }
            rowAdapters = rows
            logitAdapters = heads
        }
        var allTokens: [Int32] = []
        for s in slices { allTokens += s.tokens }

        let x = Buffer(n * e)       // [n][e] residual stream
        let xb = Buffer(n * e)      // [n][e] normed input of a sub-block
        let q = Buffer(n * e)       // [n][e] queries
        let k = Buffer(n * kvd)     // [n][kvd] keys of the new tokens
        let v = Buffer(n * kvd)     // [n][kvd] values of the new tokens
        let att = Buffer(n * e)     // [n][e] attention output
        let gate = Buffer(n * ff)   // [n][ff]
        let up = Buffer(n * ff)     // [n][ff]

        for (r, token) in allTokens.enumerated() { tokenEmbedding.decodeRow(Int(token), into: x.p + r * e) }
        if let rowAdapters { try addEmbeddingAdapterDeltas(allTokens, into: x.p, adapters: rowAdapters) }

        for (l, layer) in layers.enumerated() {
            // attention: projections over all rows at once, then each sequence against its own cache
            for r in 0..<n { puna_rmsnorm(xb.p + r * e, x.p + r * e, layer.attentionNorm, Int64(e), c.rmsNormEpsilon) }
            try layer.q.forward(pool, xb.p, q.p, nTokens: n, adapters: rowAdapters)
            try layer.k.forward(pool, xb.p, k.p, nTokens: n, adapters: rowAdapters)
            try layer.v.forward(pool, xb.p, v.p, nTokens: n, adapters: rowAdapters)
            for r in 0..<n {
                rope(q.p + r * e, heads: c.headCount, position: positions[r])
                rope(k.p + r * kvd, heads: c.headCountKV, position: positions[r])
            }
            for (i, s) in slices.enumerated() {
                let r0 = rowStart[i], count = s.tokens.count, pos0 = s.cache.count
                let cache = s.cache
                cache.store(layer: l, start: pos0, n: count, keys: k.p + r0 * kvd, values: v.p + r0 * kvd)
                try kernelStatus(puna_attention(pool, att.p + r0 * e, q.p + r0 * e, Int32(cache.type.rawValue),
                                                cache.keyRow(layer: l, position: 0), cache.valueRow(layer: l, position: 0),
                                                Int64(cache.rowBytes), Int32(count), Int32(pos0), Int32(c.headCount),
                                                Int32(c.headCountKV), Int32(c.headDimension), nil, Int32(cache.capacity)),
                                 "puna_attention of layer \(l)")
            }
            try layer.o.forward(pool, att.p, xb.p, nTokens: n, adapters: rowAdapters)
            puna_add(x.p, x.p, xb.p, Int64(n * e))

            // feed-forward (SwiGLU)
            for r in 0..<n { puna_rmsnorm(xb.p + r * e, x.p + r * e, layer.ffnNorm, Int64(e), c.rmsNormEpsilon) }
            try layer.gate.forward(pool, xb.p, gate.p, nTokens: n, adapters: rowAdapters)
            try layer.up.forward(pool, xb.p, up.p, nTokens: n, adapters: rowAdapters)
            puna_swiglu(gate.p, gate.p, up.p, Int64(n * ff))
            try layer.down.forward(pool, gate.p, xb.p, nTokens: n, adapters: rowAdapters)
            puna_add(x.p, x.p, xb.p, Int64(n * e))
        }
        for s in slices { s.cache.count += s.tokens.count }

        // The last row of each sequence that wants logits, gathered so the output matrix is read once.
        var wanted = 0
        for (i, s) in slices.enumerated() where s.wantsLogits {
            let last = rowStart[i] + s.tokens.count - 1
            puna_rmsnorm(xb.p + wanted * e, x.p + last * e, outputNorm, Int64(e), c.rmsNormEpsilon)
            wanted += 1
        }
        if wanted > 0 { try output.forward(pool, xb.p, logits, nTokens: wanted, adapters: logitAdapters) }
    }
}
