import CPuna

/// Builds a GGUF (version 3) file in memory: metadata in insertion order, then tensor infos, then
/// aligned tensor data. Used by `puna merge`, by `puna convert`, and by tests that need valid files
/// to damage.
public struct GGUFWriter {
    public var alignment: Int
    private var metadata: [(String, GGUFValue)] = []
    private var tensors: [(name: String, shape: [Int], type: GGMLType, bytes: [UInt8])] = []

    public init(alignment: Int = GGUFFile.defaultAlignment) {
        self.alignment = alignment
    }

    /// Add or replace a metadata key (replacing keeps the key's original position).
    public mutating func set(_ key: String, _ value: GGUFValue) {
        if let i = metadata.firstIndex(where: { $0.0 == key }) {
            metadata[i].1 = value
        } else {
            metadata.append((key, value))
        }
    }

    /// Add a tensor; `shape` is fastest-varying first, `bytes` already encoded in `type`.
    public mutating func addTensor(name: String, shape: [Int], type: GGMLType, bytes: [UInt8]) {
        tensors.append((name, shape, type, bytes))
    }

    /// The complete file.
    public func serialize() -> [UInt8] {
        var out = serializeHeader(tensors: tensors.map { ($0.name, $0.shape, $0.type, $0.bytes.count) })
        for t in tensors {
            out.append(contentsOf: t.bytes)
            out.append(contentsOf: [UInt8](repeating: 0, count: align(t.bytes.count) - t.bytes.count))
        }
        return out
    }

    /// The file up to its data section, for writers that stream tensor data after it: metadata, the
    /// infos of `tensors` (data laid out in this order, each padded to the alignment), padding. The
    /// tensors added with addTensor are not part of it.
    public func serializeHeader(tensors: [(name: String, shape: [Int], type: GGMLType, byteCount: Int)]) -> [UInt8] {
        var out: [UInt8] = []
        var meta = metadata
        if alignment != GGUFFile.defaultAlignment, !meta.contains(where: { $0.0 == "general.alignment" }) {
            meta.append(("general.alignment", .uint32(UInt32(alignment))))
        }
        appendInt(&out, UInt32(0x4655_4747))
        appendInt(&out, UInt32(3))
        appendInt(&out, UInt64(tensors.count))
        appendInt(&out, UInt64(meta.count))
        for (key, value) in meta {
            appendString(&out, key)
            appendInt(&out, value.type.rawValue)
            appendValue(&out, value)
        }
        var offset = 0
        var offsets: [Int] = []
        for t in tensors {
            offsets.append(offset)
            offset = align(offset + t.byteCount)
        }
        for (i, t) in tensors.enumerated() {
            appendString(&out, t.name)
            appendInt(&out, UInt32(t.shape.count))
            for d in t.shape { appendInt(&out, UInt64(d)) }
            appendInt(&out, t.type.rawValue)
            appendInt(&out, UInt64(offsets[i]))
        }
        out.append(contentsOf: [UInt8](repeating: 0, count: align(out.count) - out.count))
        return out
    }

    /// Write the file to `path`.
    public func write(to path: String) throws(PunaError) {
        let bytes = serialize()
        let fd = puna_open_write(path, 0)
        guard fd >= 0 else { throw PunaError("\(path): cannot create: \(String(cString: puna_strerror(-fd)))") }
        let err = bytes.withUnsafeBytes { puna_write_all(fd, $0.baseAddress, Int64($0.count)) }
        let closeErr = puna_close(fd)
        if err != 0 || closeErr != 0 {
            throw PunaError("\(path): write failed: \(String(cString: puna_strerror(err != 0 ? err : closeErr)))")
        }
    }

    private func align(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }

    private func appendInt<T: FixedWidthInteger>(_ out: inout [UInt8], _ v: T) {
        var le = v.littleEndian
        withUnsafeBytes(of: &le) { out.append(contentsOf: $0) }
    }

    private func appendString(_ out: inout [UInt8], _ s: String) {
        let utf8 = Array(s.utf8)
        appendInt(&out, UInt64(utf8.count))
        out.append(contentsOf: utf8)
    }

    private func appendValue(_ out: inout [UInt8], _ value: GGUFValue) {
        switch value {
        case .uint8(let v): appendInt(&out, v)
        case .int8(let v): appendInt(&out, v)
        case .uint16(let v): appendInt(&out, v)
        case .int16(let v): appendInt(&out, v)
        case .uint32(let v): appendInt(&out, v)
        case .int32(let v): appendInt(&out, v)
        case .float32(let v): appendInt(&out, v.bitPattern)
        case .bool(let v): out.append(v ? 1 : 0)
        case .string(let s): appendString(&out, s)
        case .invalidUTF8String(let bytes):
            appendInt(&out, UInt64(bytes.count))
            out.append(contentsOf: bytes)
        case .uint64(let v): appendInt(&out, v)
        case .int64(let v): appendInt(&out, v)
        case .float64(let v): appendInt(&out, v.bitPattern)
        case .array(let element, let values):
            appendInt(&out, element.rawValue)
            appendInt(&out, UInt64(values.count))
            for v in values { appendValue(&out, v) }
        }
    }
}
