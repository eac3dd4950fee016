import CPuna

/// A weight matrix used where the mapping puts it: `rows` outputs × `cols` inputs of a GGML type,
/// row-major as GGUF stores it (ne[0] = cols). `forward` computes y = W·x for a batch of tokens.
final class Linear {
    let name: String
    let type: GGMLType
    let rows: Int
    let cols: Int
    let weights: UnsafeRawPointer

    init(name: String, type: GGMLType, rows: Int, cols: Int, weights: UnsafeRawPointer) {
        self.name = name
        self.type = type
        self.rows = rows
        self.cols = cols
        self.weights = weights
    }

    /// Bytes of one row.
    var rowBytes: Int { (cols / type.blockSize) * type.bytesPerBlock }

    /// y[t][0..<rows] = W · x[t][0..<cols] for t < nTokens.
    func forward(_ pool: OpaquePointer, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, nTokens: Int) {
        // Types were checked against puna_matmul_supports at load, so this cannot fail.
        _ = puna_matmul(pool, Int32(type.rawValue), weights, Int64(rows), Int64(cols), x, Int64(nTokens), y)
    }

    /// Decode row `r` (e.g. one token's embedding) into `out` (cols floats).
    func decodeRow(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        try? type.decode(weights + r * rowBytes, into: out, count: cols)
    }
}
