import CPuna

extension LanguageModel {
    /// The byte ranges one decode step streams from memory: every matrix but the token embedding
    /// (a step reads one row of it), the output head included (also when it shares the
    /// embedding's bytes). bitsandbytes matrices count their packed codes, not their scale tables.
    private var decodeWeightRanges: [(start: UnsafeRawPointer, bytes: Int)] {
        var ranges: [(start: UnsafeRawPointer, bytes: Int)] = []
        var matrices: [Linear] = []
        for l in layers { matrices += l.matrices }
        matrices.append(output)
        for m in matrices {
            if m.ownedWeights == nil, let info = gguf.tensorInfo(m.name) ?? (m === output ? gguf.tensorInfo("token_embd.weight") : nil) {
                let data = gguf.data(of: info)
                if let base = data.baseAddress, data.count > 0 { ranges.append((base, data.count)) }
            } else if m.type.blockSize > 0 {
                ranges.append((m.weights, m.rows * m.rowBytes))
            }
        }
        return ranges
    }

    /// Bytes of weights one decode step reads (see `readDecodeWeights`).
    public var decodeWeightBytes: Int { decodeWeightRanges.reduce(0) { $0 + $1.bytes } }

    /// Reads the weights of one decode step once with the model's threads and nothing else (C
    /// `puna_read_ranges`): the memory rate a decode could reach on this machine right now.
    /// Returns the nanoseconds it took.
    public func readDecodeWeights() -> Int64 {
        let ranges = decodeWeightRanges
        let starts: [UnsafeRawPointer?] = ranges.map { $0.start }
        let bytes: [Int64] = ranges.map { Int64($0.bytes) }
        let start = puna_now_ns()
        // The C side folds every line it reads into its result, so the reads are never dead code.
        _ = starts.withUnsafeBufferPointer { s in
            bytes.withUnsafeBufferPointer { b in puna_read_ranges(pool, Int32(ranges.count), s.baseAddress, b.baseAddress) }
        }
        return puna_now_ns() - start
    }
}
