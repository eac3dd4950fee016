import CPuna

// Folding LoRA adapters into the weights: W' = W + Σ s·B·A, computed in f32 row by row and encoded
// back to the tensor's type (exact up to rounding for F32/F16/BF16; quantized types are decoded,
// updated and re-encoded, which adds a requantization error that MergeReport measures). Used at load
// (`--merge-lora`: merged tensors move to owned memory, untouched ones stay mapped) and by
// `puna merge`, which streams a new GGUF file one chunk of rows at a time.

/// The update ΔW of one matrix as two f32 factors, ΔW = P·Qᵀ with P [rows][k] (user and adapter
/// scales and the Q/K row order folded in) and Qᵀ [cols][k], k = the sum of the adapters' ranks:
/// a chunk of ΔW's rows is then one puna_matmul (Qᵀ as the weights, P's rows as the tokens).
struct LowRankUpdate {
    let rows: Int
    let cols: Int
    let k: Int
    private var p: [Float]
    private var qT: [Float]

    init(rows: Int, cols: Int, parts: [(weights: LoRAWeights, scale: Float)]) {
        self.rows = rows
        self.cols = cols
        let k = parts.reduce(0) { $0 + $1.weights.rank }
        self.k = k
        var p = [Float](repeating: 0, count: rows * k)
        var qT = [Float](repeating: 0, count: cols * k)
        var offset = 0
        for (w, s) in parts {
            let r = w.rank
            let small = Buffer(r)
            switch w.kind {
            case .linear:
                // P = s·B (B's rows moved to the base's row order), Qᵀ = Aᵀ.
                for i in 0..<w.b.rows {
                    w.b.decodeRow(i, into: small.p)
                    let dest = w.outputRows?[i] ?? i
                    for c in 0..<r { p[dest * k + offset + c] = s * small.p[c] }
                }
                let row = Buffer(cols)
                for c in 0..<r {
                    w.a.decodeRow(c, into: row.p)
                    for i in 0..<cols { qT[i * k + offset + c] = row.p[i] }
                }
            case .embedding:
                // ΔW[t][j] = s·Σ_c A_c(t)·B[j][c]: P's row t = s·A(t), Qᵀ = B.
                for t in 0..<rows {
                    w.embeddingCoefficients(token: t, into: small.p)
                    for c in 0..<r { p[t * k + offset + c] = s * small.p[c] }
                }
                for j in 0..<cols {
                    w.b.decodeRow(j, into: small.p)
                    for c in 0..<r { qT[j * k + offset + c] = small.p[c] }
                }
            }
            offset += r
        }
        self.p = p
        self.qT = qT
    }

    /// ΔW's rows [first, first + n) into out ([n][cols]).
    func rows(_ pool: OpaquePointer, first: Int, count n: Int, into out: UnsafeMutablePointer<Float>) throws(PunaError) {
        let status = p.withUnsafeBufferPointer { pp in
            qT.withUnsafeBufferPointer { q in
                puna_matmul(pool, Int32(GGMLType.f32.rawValue), q.baseAddress!, Int64(cols), Int64(k),
                            pp.baseAddress! + first * k, Int64(n), out)
            }
        }
        try kernelStatus(status, "puna_matmul of a merge update")
    }
}

/// What merging did to the weights, per tensor type: the RMS of the update itself and the RMS
/// error that encoding W + ΔW back into the type added (0 for F32; F16/BF16 rounding; the
/// requantization error for quantized types).
public struct MergeReport {
    public struct Entry {
        public let type: GGMLType
        public var tensors = 0
        public var weights = 0
        var squaredError = 0.0
        var squaredUpdate = 0.0
        var squaredMerged = 0.0

        public var rmsError: Double { weights > 0 ? (squaredError / Double(weights)).squareRoot() : 0 }
        public var rmsUpdate: Double { weights > 0 ? (squaredUpdate / Double(weights)).squareRoot() : 0 }
        public var rmsWeight: Double { weights > 0 ? (squaredMerged / Double(weights)).squareRoot() : 0 }
    }

    /// One entry per type written, in first-merged order.
    public var entries: [Entry] = []
    /// GGUF names of the merged tensors.
    public var mergedTensors: [String] = []
    /// bitsandbytes matrices that became F16 copies (they have no encoder), and the bytes of those copies.
    public var bitsAndBytesCopies = 0
    public var bitsAndBytesCopyBytes = 0

    public init() {}

    mutating func add(_ name: String, type: GGMLType, stats: RowStats) {
        mergedTensors.append(name)
        let i: Int
        if let found = entries.firstIndex(where: { $0.type == type }) {
            i = found
        } else {
            entries.append(Entry(type: type))
            i = entries.count - 1
        }
        entries[i].tensors += 1
        entries[i].weights += stats.weights
        entries[i].squaredError += stats.squaredError
        entries[i].squaredUpdate += stats.squaredUpdate
        entries[i].squaredMerged += stats.squaredMerged
    }
}

/// Sums over the rows of one tensor.
struct RowStats {
    var weights = 0
    var squaredError = 0.0
    var squaredUpdate = 0.0
    var squaredMerged = 0.0
}

/// Decode `rows` rows of `cols` weights from `source` (a `sourceType` tensor), add `update`,
/// encode them as `destType` and hand the encoded bytes to `emit` one chunk of rows at a time.
/// With `measure`, each encoded row is decoded again and compared with the f32 row it encodes.
func transcodeRows(_ pool: OpaquePointer, source: UnsafeRawPointer, sourceType: GGMLType, rows: Int, cols: Int,
                   update: LowRankUpdate?, destType: GGMLType, measure: Bool,
                   decodeSource: ((_ first: Int, _ count: Int, _ into: UnsafeMutablePointer<Float>) -> Void)? = nil,
                   emit: (UnsafeRawBufferPointer) throws(PunaError) -> Void) throws(PunaError) -> RowStats {
    let sourceRowBytes = decodeSource != nil ? 0 : sourceType.rowBytes(cols)
    guard let sourceRowBytes, let destRowBytes = destType.rowBytes(cols) else {
        throw PunaError("\(cols) weights per row are not whole blocks of \(sourceType.name) / \(destType.name)")
    }
    guard decodeSource != nil || sourceType.canDecode else { throw PunaError("decoding \(sourceType.name) is not supported") }
    guard destType.canEncode else { throw PunaError("encoding to \(destType.name) is not supported") }
    // About 1 MiB of f32 per buffer.
    let chunk = max(1, min(rows, (1 << 18) / max(cols, 1)))
    let merged = Buffer(chunk * cols)
    let delta = Buffer(update == nil ? 1 : chunk * cols)
    let check = Buffer(measure ? cols : 1)
    let encoded = UnsafeMutableRawPointer.allocate(byteCount: max(chunk * destRowBytes, 1), alignment: 64)
    defer { encoded.deallocate() }
    var stats = RowStats()
    var first = 0
    while first < rows {
        let n = min(chunk, rows - first)
        if let decodeSource {
            decodeSource(first, n, merged.p)
        } else {
            for i in 0..<n {
                try sourceType.decode(source + (first + i) * sourceRowBytes, into: merged.p + i * cols, count: cols)
            }
        }
        if let update {
            try update.rows(pool, first: first, count: n, into: delta.p)
            puna_add(merged.p, merged.p, delta.p, Int64(n * cols))
        }
        for i in 0..<n {
            let row = merged.p + i * cols
            let out = encoded + i * destRowBytes
            try destType.encode(row, into: out, count: cols)
            if measure {
                try destType.decode(out, into: check.p, count: cols)
                var e = 0.0, u = 0.0, m = 0.0
                for j in 0..<cols {
                    let d = Double(check.p[j]) - Double(row[j])
                    e += d * d
                    m += Double(row[j]) * Double(row[j])
                }
                if update != nil {
                    for j in 0..<cols { let v = Double(delta.p[i * cols + j]); u += v * v }
                }
                stats.squaredError += e
                stats.squaredUpdate += u
                stats.squaredMerged += m
            }
        }
        stats.weights += n * cols
        try emit(UnsafeRawBufferPointer(start: encoded, count: n * destRowBytes))
        first += n
    }
    return stats
}

extension LanguageModel {
    /// Fold the adapters into the weights: every matrix they update is replaced by W + Σ s·B·A
    /// encoded in its own type, in owned memory (untouched matrices stay mapped). The adapters are
    /// not made active; the returned report gives the rounding/requantization error per type.
    @discardableResult
    public func mergeAdapters(_ set: AdapterSet) throws(PunaError) -> MergeReport {
        var report = MergeReport()
        for linear in namedMatrices {
            let parts = set.parts(for: linear.name)
            if parts.isEmpty { continue }
            let update = LowRankUpdate(rows: linear.rows, cols: linear.cols, parts: parts)
            // A bitsandbytes matrix has no encoder: the merged weights become an F16 copy.
            let destType = linear.type.isBitsAndBytes ? GGMLType.f16 : linear.type
            let bytes = destType.rowBytes(linear.cols)! * linear.rows
            let owned = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 1), alignment: 64)
            var written = 0
            let stats: RowStats
            let decodeSource: ((Int, Int, UnsafeMutablePointer<Float>) -> Void)? = linear.type.isBitsAndBytes
                ? { first, count, out in linear.decodeRows(first: first, count: count, into: out) } : nil
            do throws(PunaError) {
                stats = try transcodeRows(pool, source: linear.weights, sourceType: linear.type, rows: linear.rows, cols: linear.cols,
                                          update: update, destType: destType, measure: true, decodeSource: decodeSource) { (chunk) throws(PunaError) in
                    owned.advanced(by: written).copyMemory(from: chunk.baseAddress!, byteCount: chunk.count)
                    written += chunk.count
                }
            } catch {
                owned.deallocate()
                throw PunaError("merging into '\(linear.name)': \(error.message)")
            }
            if linear.ownedWeights == nil {
                // The mapped original is not read again: let the kernel drop its pages.
                if let t = gguf.tensorInfo(linear.name) { gguf.advise(t, .dontNeed) }
            }
            linear.ownedWeights?.deallocate()
            linear.ownedWeights = owned
            linear.weights = UnsafeRawPointer(owned)
            if linear.type.isBitsAndBytes {
                report.bitsAndBytesCopies += 1
                report.bitsAndBytesCopyBytes += bytes
            }
            linear.type = destType
            report.add(linear.name, type: linear.type, stats: stats)
        }
        return report
    }

    /// Write a GGUF of this model with the adapters merged: metadata kept (general.file_type
    /// updated when the type changes), same alignment, tensors in the base file's order. `type` nil
    /// keeps every tensor's type (only the updated ones are re-encoded); otherwise every matrix is
    /// converted to it (1-D tensors such as norms stay as they are; a matrix whose rows are not whole
    /// blocks of the type falls back to q8_0, else f16). Streams one chunk of rows at a time.
    public func writeMerged(_ set: AdapterSet, to path: String, type: GGMLType? = nil) throws(PunaError) -> MergedFileSummary {
        if let type, !type.canEncode || !type.canDecode {
            throw PunaError("cannot write tensors of type \(type.name)")
        }
        if path == gguf.path { throw PunaError("\(path): the output would overwrite the base model") }
        if gguf.isHuggingFaceFolder {
            throw PunaError("\(gguf.path): puna merge writes GGUF files from GGUF bases; convert the Hugging Face folder first (puna convert), then merge")
        }
        struct Planned {
            let name: String
            let shape: [Int]
            let source: UnsafeRawPointer
            let sourceType: GGMLType
            let type: GGMLType
            let parts: [(weights: LoRAWeights, scale: Float)]
            let byteCount: Int
        }
        var plan: [Planned] = []
        var summary = MergedFileSummary()
        func target(_ shape: [Int], _ sourceType: GGMLType, _ name: String) -> GGMLType {
            guard let type, shape.count >= 2 else { return sourceType }
            for candidate in [type, .q8_0, .f16] where shape[0] % candidate.blockSize == 0 {
                if candidate != type { summary.fallbacks.append((name, candidate)) }
                return candidate
            }
            return sourceType
        }
        for t in gguf.tensors {
            let linear = matrix(named: t.name)
            let source = linear?.weights ?? gguf.data(of: t).baseAddress!
            let parts = linear == nil ? [] : set.parts(for: t.name)
            let type = target(t.shape, t.type, t.name)
            plan.append(Planned(name: t.name, shape: t.shape, source: source, sourceType: t.type, type: type, parts: parts,
                                byteCount: type.rowBytes(t.rowLength)! * t.rowCount))
        }
        // A tied output head that an adapter (or an earlier merge) changed gets its own tensor.
        if gguf.tensorInfo(output.name) == nil {
            let parts = set.parts(for: output.name)
            if !parts.isEmpty || output.ownedWeights != nil {
                let shape = [output.cols, output.rows]
                let type = target(shape, output.type, output.name)
                plan.append(Planned(name: output.name, shape: shape, source: output.weights, sourceType: output.type, type: type,
                                    parts: parts, byteCount: type.rowBytes(output.cols)! * output.rows))
            }
        }

        // Header: the metadata through GGUFWriter (alignment 1, so nothing is padded after it and
        // the real alignment is stated by general.alignment), then the tensor infos.
        let alignment = gguf.alignment
        var writer = GGUFWriter(alignment: 1)
        for key in gguf.keys { writer.set(key, gguf.metadata[key]!) }
        writer.set("general.alignment", .uint32(UInt32(alignment)))
        if let type {
            if let ftype = LanguageModel.fileType(type) { writer.set("general.file_type", .uint32(ftype)) }
            if type.isQuantized && gguf["general.quantization_version"] == nil {
                writer.set("general.quantization_version", .uint32(2))
            }
        }
        var header = writer.serialize()
        var count = UInt64(plan.count).littleEndian
        withUnsafeBytes(of: &count) { for i in 0..<8 { header[8 + i] = $0[i] } }
        func append<T: FixedWidthInteger>(_ v: T) {
            var le = v.littleEndian
            withUnsafeBytes(of: &le) { header.append(contentsOf: $0) }
        }
        func aligned(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }
        var offset = 0
        for t in plan {
            let utf8 = Array(t.name.utf8)
            append(UInt64(utf8.count))
            header.append(contentsOf: utf8)
            append(UInt32(t.shape.count))
            for d in t.shape { append(UInt64(d)) }
            append(t.type.rawValue)
            append(UInt64(offset))
            offset = aligned(offset + t.byteCount)
        }
        header.append(contentsOf: [UInt8](repeating: 0, count: aligned(header.count) - header.count))

        let fd = puna_open_write(path, 0)
        guard fd >= 0 else { throw PunaError("\(path): cannot create: \(String(cString: puna_strerror(-fd)))") }
        func write(_ bytes: UnsafeRawBufferPointer) throws(PunaError) {
            guard bytes.count > 0 else { return }
            let err = puna_write_all(fd, bytes.baseAddress, Int64(bytes.count))
            if err != 0 { throw PunaError("\(path): write failed: \(String(cString: puna_strerror(err)))") }
        }
        let zeros = [UInt8](repeating: 0, count: alignment)
        do throws(PunaError) {
            let headerError = header.withUnsafeBytes { puna_write_all(fd, $0.baseAddress, Int64($0.count)) }
            if headerError != 0 { throw PunaError("\(path): write failed: \(String(cString: puna_strerror(headerError)))") }
            for t in plan {
                let rows = t.shape.dropFirst().reduce(1, *), cols = t.shape[0]
                if t.parts.isEmpty && t.type == t.sourceType {
                    try write(UnsafeRawBufferPointer(start: t.source, count: t.byteCount))
                } else {
                    let update = t.parts.isEmpty ? nil : LowRankUpdate(rows: rows, cols: cols, parts: t.parts)
                    let stats = try transcodeRows(pool, source: t.source, sourceType: t.sourceType, rows: rows, cols: cols,
                                                  update: update, destType: t.type, measure: update != nil) { (chunk) throws(PunaError) in
                        try write(chunk)
                    }
                    if update != nil { summary.report.add(t.name, type: t.type, stats: stats) }
                    if t.type != t.sourceType { summary.convertedTensors += 1 }
                }
                let pad = aligned(t.byteCount) - t.byteCount
                let padError = pad == 0 ? 0 : zeros.withUnsafeBytes { puna_write_all(fd, $0.baseAddress, Int64(pad)) }
                if padError != 0 { throw PunaError("\(path): write failed: \(String(cString: puna_strerror(padError)))") }
            }
        } catch {
            _ = puna_close(fd)
            throw error
        }
        if puna_close(fd) != 0 { throw PunaError("\(path): closing the file failed") }
        summary.tensorCount = plan.count
        summary.fileBytes = header.count + offset
        // Read it back: a file Puna cannot parse must not be reported as written.
        _ = try GGUFFile(path: path)
        return summary
    }

    /// llama.cpp's general.file_type for a file that is "mostly" `type`.
    static func fileType(_ type: GGMLType) -> UInt32? {
        switch type {
        case .f32: return 0
        case .f16: return 1
        case .q4_0: return 2
        case .q4_1: return 3
        case .q8_0: return 7
        case .q5_0: return 8
        case .q5_1: return 9
        case .q4_K: return 14   // Q4_K_S: every matrix q4_K
        case .q5_K: return 16
        case .q6_K: return 18
        case .bf16: return 32
        default: return nil
        }
    }
}

/// What `writeMerged` wrote.
public struct MergedFileSummary {
    public var tensorCount = 0
    /// Tensors whose type changed.
    public var convertedTensors = 0
    /// Matrices whose rows are not whole blocks of the requested type, and the type they got.
    public var fallbacks: [(name: String, type: GGMLType)] = []
    public var fileBytes = 0
    /// The merged tensors and their rounding/requantization error.
    public var report = MergeReport()

    public init() {}
}
