import CPuna

/// One tensor of a safetensors file.
public struct SafetensorsTensorInfo {
    public let name: String
    /// The dtype as the file spells it: "F32", "F16", "BF16", "I64" ...
    public let dtype: String
    /// Dimensions outermost first, as PyTorch lists them (the reverse of GGUF's order).
    public let shape: [Int]
    /// Absolute byte offset of the data in the file.
    public let offset: Int
    public let byteCount: Int

    public var elementCount: Int { shape.reduce(1, *) }

    /// The GGML type with the same element encoding, for the float types Puna computes with.
    public var ggmlType: GGMLType? {
        switch dtype {
        case "F32": return .f32
        case "F16": return .f16
        case "BF16": return .bf16
        default: return nil
        }
    }
}

/// A safetensors file, memory-mapped: an 8-byte little-endian header length, a JSON header naming
/// each tensor's dtype, shape and byte range, then the raw data. Tensor data are views into the
/// mapping and never copied. Every length and range is checked against the file before use, so a
/// truncated or hostile file throws a `PunaError` naming the field, never traps.
public final class SafetensorsFile {
    public let file: MappedFile
    public var path: String { file.path }
    /// Tensors in header order.
    public let tensors: [SafetensorsTensorInfo]
    private let tensorIndex: [String: Int]
    /// The free-form string map stored under `__metadata__`.
    public let metadata: [(key: String, value: String)]
    /// Absolute byte offset of the data section (8 + header length).
    public let dataOffset: Int

    /// The reference implementation refuses headers above 100 MB; so does Puna.
    static let maxHeaderBytes = 100_000_000

    /// Bytes per element of every dtype the format defines.
    static func elementBytes(_ dtype: String) -> Int? {
        switch dtype {
        case "F64", "I64", "U64": return 8
        case "F32", "I32", "U32": return 4
        case "F16", "BF16", "I16", "U16": return 2
        case "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2": return 1
        default: return nil
        }
    }

    public convenience init(path: String) throws(PunaError) {
        try self.init(file: MappedFile(path: path))
    }

    public init(file: MappedFile) throws(PunaError) {
        self.file = file
        let path = file.path
        let size = file.count
        guard size >= 8, let base = file.baseAddress else {
            throw PunaError("\(path): truncated: \(size) bytes, but a safetensors file starts with an 8-byte header length")
        }
        let headerLength = UInt64(littleEndian: file.bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
        guard headerLength <= UInt64(size - 8) else {
            throw PunaError("\(path): header length \(headerLength) reaches beyond the end of the file (\(size) bytes): truncated or not a safetensors file")
        }
        guard headerLength <= UInt64(SafetensorsFile.maxHeaderBytes) else {
            throw PunaError("\(path): header length \(headerLength) exceeds the \(SafetensorsFile.maxHeaderBytes)-byte limit")
        }
        guard headerLength >= 2 else {
            throw PunaError("\(path): header of \(headerLength) bytes is too short to be a JSON object")
        }
        let headerBytes = UnsafeBufferPointer(start: (base + 8).assumingMemoryBound(to: UInt8.self), count: Int(headerLength))
        let header: JSONValue
        do throws(PunaError) {
            header = try JSONValue.parse(bytes: headerBytes)
        } catch {
            throw PunaError("\(path): header is not valid JSON: \(error.message)")
        }
        guard let members = header.object else { throw PunaError("\(path): header is not a JSON object") }
        let dataOffset = 8 + Int(headerLength)
        let dataBytes = size - dataOffset

        var infos: [SafetensorsTensorInfo] = []
        var index: [String: Int] = [:]
        var metadata: [(key: String, value: String)] = []
        for (name, value) in members {
            if name == "__metadata__" {
                guard let entries = value.object else { throw PunaError("\(path): __metadata__ is not a JSON object") }
                for (k, v) in entries {
                    guard let s = v.string else { throw PunaError("\(path): __metadata__ value of '\(k)' is not a string") }
                    metadata.append((k, s))
                }
                continue
            }
            guard value.object != nil else { throw PunaError("\(path): entry for tensor '\(name)' is not a JSON object") }
            guard let dtype = value["dtype"]?.string else { throw PunaError("\(path): tensor '\(name)' has no dtype string") }
            guard let elementBytes = SafetensorsFile.elementBytes(dtype) else {
                throw PunaError("\(path): tensor '\(name)' has unknown dtype '\(dtype)'")
            }
            guard let dims = value["shape"]?.array else { throw PunaError("\(path): tensor '\(name)' has no shape array") }
            var shape: [Int] = []
            // As in GGUF: the non-zero dimensions' product must fit as well as the element count.
            var elements = 1, nonZero = 1
            for d in dims {
                guard let n = d.int, n >= 0 else { throw PunaError("\(path): tensor '\(name)' has a shape entry that is not a non-negative integer") }
                let (product, overflow) = elements.multipliedReportingOverflow(by: n)
                let (nonZeroProduct, nonZeroOverflow) = nonZero.multipliedReportingOverflow(by: max(n, 1))
                nonZero = nonZeroProduct
                guard !overflow, !nonZeroOverflow else { throw PunaError("\(path): tensor '\(name)' shape \(shapeText(shape + [n])) overflows") }
                elements = product
                shape.append(n)
            }
            guard let range = value["data_offsets"]?.array, range.count == 2,
                  let begin = range[0].int, let end = range[1].int, begin >= 0, end >= begin else {
                throw PunaError("\(path): tensor '\(name)' needs data_offsets [begin, end] with 0 <= begin <= end")
            }
            let (bytes, overflow) = elements.multipliedReportingOverflow(by: elementBytes)
            guard !overflow, bytes == end - begin else {
                throw PunaError("\(path): tensor '\(name)' (\(dtype) \(shapeText(shape))) needs \(overflow ? "too many" : "\(bytes)") bytes but data_offsets span \(end - begin)")
            }
            guard end <= dataBytes else {
                throw PunaError("\(path): tensor '\(name)' data [\(begin), \(end)) lies past the end of the file (the data section holds \(dataBytes) bytes)")
            }
            if index[name] != nil { throw PunaError("\(path): duplicate tensor name '\(name)'") }
            index[name] = infos.count
            infos.append(SafetensorsTensorInfo(name: name, dtype: dtype, shape: shape, offset: dataOffset + begin, byteCount: bytes))
        }
        // Byte ranges may not overlap (the format lays tensors end to end).
        let byOffset = infos.sorted { $0.offset < $1.offset }
        var previousEnd = dataOffset
        var previousName = ""
        for t in byOffset where t.byteCount > 0 {
            guard t.offset >= previousEnd else {
                throw PunaError("\(path): tensor '\(t.name)' overlaps tensor '\(previousName)'")
            }
            previousEnd = t.offset + t.byteCount
            previousName = t.name
        }

        self.tensors = infos
        self.tensorIndex = index
        self.metadata = metadata
        self.dataOffset = dataOffset
    }

    public func tensorInfo(_ name: String) -> SafetensorsTensorInfo? {
        tensorIndex[name].map { tensors[$0] }
    }

    /// The tensor's bytes, a view into the mapping.
    public func data(of tensor: SafetensorsTensorInfo) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: file.baseAddress! + tensor.offset, count: tensor.byteCount)
    }

    /// Total bytes of all tensor data.
    public var tensorBytes: Int { tensors.reduce(0) { $0 + $1.byteCount } }
}

/// "[8, 64]"
func shapeText(_ shape: [Int]) -> String {
    var s = "["
    for (i, d) in shape.enumerated() { s += (i == 0 ? "" : ", ") + "\(d)" }
    return s + "]"
}
