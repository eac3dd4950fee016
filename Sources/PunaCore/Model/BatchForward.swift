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

extension LanguageModel {
    /// One forward step over several independent sequences, each with its own KV cache. All new
    /// tokens are stacked into one [rows][n_embd] matrix, so every weight matrix is read once per
    /// step however many sequences take part; only attention runs per sequence, over that
    /// sequence's rows and cache. Sequences with different adapters share the step: the base
    /// product is batched and each adapter's low-rank update is added to its own sequences' rows.
    ///
    /// Returns the logits of the last token of each slice that wants them, [wanted][n_vocab] in
    /// slice order. A row's arithmetic does not depend on the other rows of the step (the matmul
    /// contract in puna_kernels.h), so a sequence gets the same logits, bit for bit, as from
    /// `evaluate` on its own. On a Vulkan device (`useVulkan`) the step runs there, with each
    /// sequence's keys and values in its cache's GPU half; there too a row's bits do not depend on
    /// the other rows, and they stay within float rounding of `evaluate`'s (whose one-token steps
    /// take the matrix × vector shaders).
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
            try s.cache.checkCanContinue(tokens: s.tokens.count, window: config.slidingWindow)
            // Two slices on one cache would both write the same positions.
            for j in 0..<i where slices[j].cache === s.cache {
                throw PunaError("batch sequences \(j) and \(i) share one KV cache")
            }
        }
    }

    /// The step itself (inputs already validated). Writes the wanted logits rows to `logits`.
    func forwardBatch(_ slices: [BatchSlice], logits: UnsafeMutablePointer<Float>) throws(PunaError) {
        // The GPU layers' keys and values live on the device: every step of these caches runs there.
        if let vulkan { return try vulkan.forwardBatch(self, slices, logits: logits) }
        let e = config.embeddingLength
        // Row ranges of each sequence in the stacked matrix.
        var sequences: [SequenceRows] = []
        var n = 0
        for s in slices {
            sequences.append(SequenceRows(cache: s.cache, firstRow: n, count: s.tokens.count))
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
        for (r, token) in allTokens.enumerated() { tokenEmbedding.decodeRow(Int(token), into: x.p + r * e) }
        if let rowAdapters { try addEmbeddingAdapterDeltas(allTokens, into: x.p, adapters: rowAdapters) }
        prepareEmbeddings(x, rows: n)
        try forwardLayers(x, rows: n, sequences: sequences, layers: 0..<layers.count, adapters: rowAdapters)
        for s in slices { s.cache.count += s.tokens.count }

        // The last row of each sequence that wants logits.
        var wanted: [Int] = []
        for (i, s) in slices.enumerated() where s.wantsLogits { wanted.append(sequences[i].firstRow + s.tokens.count - 1) }
        if !wanted.isEmpty { try forwardOutput(x, rows: wanted, logits: logits, adapters: logitAdapters) }
    }
}
