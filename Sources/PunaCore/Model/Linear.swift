import CPuna

/// A weight matrix used where the mapping puts it: `rows` outputs × `cols` inputs of a GGML type,
/// row-major as GGUF stores it (ne[0] = cols), with its bias when the file has one. `forward`
/// computes y = W·x (+ the active LoRA updates) (+ b) for a batch of tokens: the one entry every
/// matrix of the model goes through.
@_spi(Testing) public final class Linear {
    @_spi(Testing) public let name: String
    /// Changes only when adapters are merged into an F16 copy of a bitsandbytes matrix.
    var type: GGMLType
    @_spi(Testing) public let rows: Int
    @_spi(Testing) public let cols: Int
    /// The mapped tensor, or `ownedWeights` once adapters were merged into it (Merge.swift).
    var weights: UnsafeRawPointer
    /// [rows], added after the product and the adapters' updates (Qwen2's Q/K/V).
    let bias: [Float]?
    var ownedWeights: UnsafeMutableRawPointer? = nil
    /// The model's active LoRA adapters, added on top of W·x in `forward` (LoRA.swift).
    var adapterState: AdapterState? = nil
    /// This matrix's pairs of the active set, ready for the LoRA kernel (LoRA.swift).
    var adapterCache: LinearAdapterCache? = nil

    @_spi(Testing) public init(name: String, type: GGMLType, rows: Int, cols: Int, weights: UnsafeRawPointer, bias: [Float]? = nil) {
        self.name = name
        self.bias = bias
        self.type = type
        self.rows = rows
        self.cols = cols
        self.weights = weights
    }

    deinit { ownedWeights?.deallocate() }

    /// Bytes of one row.
    var rowBytes: Int { (cols / type.blockSize) * type.bytesPerBlock }

    /// y[t][0..<rows] = W · x[t][0..<cols] for t < nTokens, plus the LoRA adapters' updates: the
    /// model's active set for every row when `adapters` is nil, else adapters[t] for row t.
    @_spi(Testing) public func forward(_ pool: OpaquePointer, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, nTokens: Int,
                                       adapters: [AdapterSet]? = nil) throws(PunaError) {
        // One token with active adapters: product and deltas in one pool run (LoRA.swift).
        if adapters == nil && nTokens == 1 && adapterState != nil && Linear.forwardOneTokenWithAdapters([self], pool, x, [y]) {
            addBias(y, nTokens: 1)
            return
        }
        try kernelStatus(puna_matmul(pool, Int32(type.rawValue), weights, Int64(rows), Int64(cols), x, Int64(nTokens), y),
                         "puna_matmul of \(name) (\(type.name), \(rows)×\(cols))")
        try addAdapterDeltas(pool, x, y, nTokens: nTokens, adapters: adapters)
        addBias(y, nTokens: nTokens)
    }

    /// Matrices that read the same input (Q, K, V; gate, up): one pool run for all of them (ops.c
    /// puna_matmul_many, same bits as one by one), with the active adapters' deltas too when
    /// decoding one token (puna_lora_matmul_many1); other adapter cases go one by one.
    static func forward(_ matrices: [Linear], _ pool: OpaquePointer, _ x: UnsafePointer<Float>, _ ys: [UnsafeMutablePointer<Float>],
                        nTokens: Int, adapters: [AdapterSet]?) throws(PunaError) {
        let anyAdapters = adapters != nil || matrices.contains { !($0.adapterState?.active.isEmpty ?? true) }
        if anyAdapters {
            if adapters == nil && nTokens == 1 && Linear.forwardOneTokenWithAdapters(matrices, pool, x, ys) {
                for (m, y) in zip(matrices, ys) { m.addBias(y, nTokens: 1) }
                return
            }
            for (m, y) in zip(matrices, ys) { try m.forward(pool, x, y, nTokens: nTokens, adapters: adapters) }
            return
        }
        let types = matrices.map { Int32($0.type.rawValue) }
        let weights: [UnsafeRawPointer?] = matrices.map { $0.weights }
        let rows = matrices.map { Int64($0.rows) }
        let outputs: [UnsafeMutablePointer<Float>?] = ys.map { $0 }
        try kernelStatus(puna_matmul_many(pool, Int32(matrices.count), types, weights, rows, Int64(matrices[0].cols), x, Int64(nTokens), outputs),
                         "puna_matmul_many of \(matrices.map { $0.name }.joined(separator: ", "))")
        for (m, y) in zip(matrices, ys) { m.addBias(y, nTokens: nTokens) }
    }

    func addBias(_ y: UnsafeMutablePointer<Float>, nTokens: Int) {
        guard let bias else { return }
        puna_add_bias(y, bias, Int64(nTokens), Int64(rows))
    }

    /// Decode row `r` (e.g. one token's embedding) into `out` (cols floats). Types were checked to
    /// decode at load.
    func decodeRow(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        decodeRows(first: r, count: 1, into: out)
    }

    /// Decode rows [first, first + count) into `out` ([count][cols]); bitsandbytes matrices exactly
    /// as bitsandbytes dequantizes them.
    func decodeRows(first: Int, count: Int, into out: UnsafeMutablePointer<Float>) {
        switch type {
        case .bnb4:
            _ = puna_bnb4_dequantize_rows(weights.assumingMemoryBound(to: puna_bnb4_weight.self), Int64(cols), Int64(first), Int64(first + count), out)
        case .bnbInt8:
            _ = puna_bnb_int8_dequantize_rows(weights.assumingMemoryBound(to: puna_bnb_int8_weight.self), Int64(cols), Int64(first), Int64(first + count), out)
        default:
            try? type.decode(weights + first * rowBytes, into: out, count: count * cols)
        }
    }
}

/// A C kernel's status. The kernels refuse only arguments the loaders already checked (a type without
/// a kernel, sizes that do not agree), so a refusal is a bug in Puna: it becomes an error naming the
/// call rather than numbers computed from buffers the kernel never wrote.
func kernelStatus(_ status: Int32, _ call: @autoclosure () -> String) throws(PunaError) {
    if status != 0 { throw PunaError("internal error: \(call()) refused its arguments (status \(status))") }
}
