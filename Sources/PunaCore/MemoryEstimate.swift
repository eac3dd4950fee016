/// What running a model will cost in memory, broken down so a refusal can say what to change.
/// Shared by `puna info --ctx N` and the start of every run.
public struct MemoryEstimate {
    public struct Item {
        /// Machine-readable name (JSON key).
        public let key: String
        /// Human description.
        public let name: String
        public let bytes: Int
    }

    public var items: [Item] = []

    public var totalBytes: Int { items.reduce(0) { $0 + $1.bytes } }

    public init() {}

    public mutating func add(_ key: String, _ name: String, _ bytes: Int) { items.append(Item(key: key, name: name, bytes: bytes)) }

    /// Bytes of one K or V cache entry per element for a cache type.
    public static func cacheBytesPerElement(_ type: GGMLType) -> Double {
        Double(type.bytesPerBlock) / Double(max(type.blockSize, 1))
    }

    /// Estimate for a LLaMA model: mapped weights, KV cache of `context` positions, activations for
    /// a prompt batch of `batch` tokens, and per-thread buffers.
    public static func llama(config c: LlamaConfig, weightBytes: Int, context: Int, cacheType: GGMLType = .f16,
                             batch: Int = 512, threads: Int = 4) -> MemoryEstimate {
        var e = MemoryEstimate()
        e.add("weights", "weights (memory-mapped)", weightBytes)
        let kvElements = 2 * c.blockCount * context * c.kvDimension
        e.add("kv_cache", "KV cache (\(cacheType.name), \(context) positions)", Int(Double(kvElements) * cacheBytesPerElement(cacheType)))
        let b = min(batch, context)
        // Per token of a batch: residual, normed input, attention output, q, k, v, two FFN halves.
        let perToken = 3 * c.embeddingLength + c.embeddingLength + 2 * c.kvDimension + 2 * c.feedForwardLength
        let activations = 4 * (b * perToken + b * c.vocabSize)  // logits of every batch position
        e.add("activations", "activations (batch \(b))", activations)
        let widest = max(c.embeddingLength, c.feedForwardLength, c.vocabSize)
        e.add("thread_buffers", "thread buffers (\(threads) threads)", 4 * threads * (widest + context * 2))
        return e
    }
}

/// "1.23 GiB" style text of a byte count.
public func formatBytes(_ bytes: Int) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    if unit == 0 { return "\(bytes) B" }
    let scaled = Int((value * 100).rounded())
    let frac = scaled % 100
    return "\(scaled / 100).\(frac < 10 ? "0" : "")\(frac) \(units[unit])"
}
