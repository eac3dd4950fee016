import CPuna

/// GGUF metadata value types, as numbered in the file format.
public enum GGUFValueType: UInt32 {
    case uint8 = 0, int8, uint16, int16, uint32, int32, float32, bool, string, array, uint64, int64, float64

    /// Smallest number of bytes one value of this type occupies (used to bound counts before allocating).
    var minimumBytes: Int {
        switch self {
        case .uint8, .int8, .bool: return 1
        case .uint16, .int16: return 2
        case .uint32, .int32, .float32: return 4
        case .uint64, .int64, .float64, .string: return 8
        case .array: return 12
        }
    }

    public var name: String {
        switch self {
        case .uint8: return "u8"
        case .int8: return "i8"
        case .uint16: return "u16"
        case .int16: return "i16"
        case .uint32: return "u32"
        case .int32: return "i32"
        case .float32: return "f32"
        case .bool: return "bool"
        case .string: return "string"
        case .array: return "array"
        case .uint64: return "u64"
        case .int64: return "i64"
        case .float64: return "f64"
        }
    }
}

/// One metadata value. Arrays keep their element type so an empty array still knows what it holds.
public indirect enum GGUFValue {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case float32(Float), bool(Bool), string(String), uint64(UInt64), int64(Int64), float64(Double)
    /// A string whose bytes are not valid UTF-8 (a token piece holding half a character, say), kept
    /// byte for byte: decoding it would turn its bytes into U+FFFD and make distinct pieces collide.
    case invalidUTF8String([UInt8])
    case array(GGUFValueType, [GGUFValue])

    public var type: GGUFValueType {
        switch self {
        case .uint8: return .uint8
        case .int8: return .int8
        case .uint16: return .uint16
        case .int16: return .int16
        case .uint32: return .uint32
        case .int32: return .int32
        case .float32: return .float32
        case .bool: return .bool
        case .string, .invalidUTF8String: return .string
        case .uint64: return .uint64
        case .int64: return .int64
        case .float64: return .float64
        case .array: return .array
        }
    }

    /// Any integer type as Int (nil for non-integers or a u64 beyond Int.max).
    public var intValue: Int? {
        switch self {
        case .uint8(let v): return Int(v)
        case .int8(let v): return Int(v)
        case .uint16(let v): return Int(v)
        case .int16(let v): return Int(v)
        case .uint32(let v): return Int(v)
        case .int32(let v): return Int(v)
        case .uint64(let v): return v <= UInt64(Int.max) ? Int(v) : nil
        case .int64(let v): return Int(v)
        default: return nil
        }
    }

    /// Any numeric type as Double.
    public var doubleValue: Double? {
        switch self {
        case .float32(let v): return Double(v)
        case .float64(let v): return v
        default: return intValue.map { Double($0) }
        }
    }

    /// The string; one that is not valid UTF-8 comes with U+FFFD in place of its bad bytes (for names
    /// and messages; `stringBytes` has the exact bytes).
    public var stringValue: String? {
        switch self {
        case .string(let s): return s
        case .invalidUTF8String(let bytes): return String(decoding: bytes, as: UTF8.self)
        default: return nil
        }
    }

    /// A string's bytes exactly as stored in the file.
    public var stringBytes: [UInt8]? {
        switch self {
        case .string(let s): return Array(s.utf8)
        case .invalidUTF8String(let bytes): return bytes
        default: return nil
        }
    }

    public var boolValue: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    public var arrayValue: [GGUFValue]? {
        if case .array(_, let a) = self { return a }
        return nil
    }
}

/// A tensor's description and where its bytes are in the file.
public struct GGUFTensorInfo {
    public let name: String
    /// Dimensions, fastest-varying first (GGML's ne[0] is the row length).
    public let shape: [Int]
    public let type: GGMLType
    /// Byte offset from the start of the data section (of file `source`).
    public let offset: Int
    public let byteCount: Int
    /// Which of `GGUFFile.files` holds the data: 0 for a GGUF file; a Hugging Face folder's shards.
    public internal(set) var source = 0

    public var elementCount: Int { shape.reduce(1, *) }
    /// Weights per row (ne[0]) and number of rows (product of the other dims).
    public var rowLength: Int { shape.first ?? 1 }
    public var rowCount: Int { shape.dropFirst().reduce(1, *) }
}

/// A GGUF file (versions 2 and 3), memory-mapped. Metadata is parsed eagerly; tensor data are views
/// into the mapping and never copied. Every length, count and offset is checked against the file
/// before use, so a truncated or hostile file throws a `PunaError` naming the field, never traps.
public final class GGUFFile {
    /// The GGUF file, or a Hugging Face folder's first shard.
    public let file: MappedFile
    /// Every mapped file tensors live in (one for a GGUF file; the shards of a Hugging Face folder).
    public let files: [MappedFile]
    /// Start of each file's data section.
    let dataOffsets: [Int]
    /// The GGUF file's path, or the Hugging Face folder's.
    public let path: String
    /// Set when the tensors and keys were read from a Hugging Face folder (see HuggingFaceFolder):
    /// Q/K rows are in Hugging Face's order, so the model rotates head halves.
    public let isHuggingFaceFolder: Bool
    /// The bitsandbytes-quantized matrices of a Hugging Face folder: tensors of type .bnb4 or
    /// .bnbInt8 are computed through these descriptors, not through their bytes.
    public let bitsAndBytes: BitsAndBytesWeights?
    public let version: UInt32
    /// Metadata keys in file order.
    public let keys: [String]
    public let metadata: [String: GGUFValue]
    public let tensors: [GGUFTensorInfo]
    private let tensorIndex: [String: Int]
    public let alignment: Int
    /// Absolute byte offset of the tensor data section.
    public let dataOffset: Int

    public static let defaultAlignment = 32
    static let maxDimensions = 4
    static let maxArrayNesting = 8

    /// A GGUF file, or a Hugging Face model folder (config.json + safetensors, read in place).
    public convenience init(path: String) throws(PunaError) {
        if puna_path_is_directory(path) != 0 {
            let folder = try HuggingFaceFolder(path: path)
            self.init(virtual: path, keys: folder.keys, metadata: folder.metadata, tensors: folder.tensors, files: folder.files,
                      dataOffsets: folder.files.map { _ in 0 }, bitsAndBytes: folder.bitsAndBytes)
            return
        }
        try self.init(file: MappedFile(path: path))
    }

    /// Keys and tensors made elsewhere, with data in `files` (offsets from `dataOffsets`).
    init(virtual path: String, keys: [String], metadata: [String: GGUFValue], tensors: [GGUFTensorInfo], files: [MappedFile],
         dataOffsets: [Int], bitsAndBytes: BitsAndBytesWeights? = nil) {
        self.bitsAndBytes = bitsAndBytes
        self.file = files[0]
        self.files = files
        self.dataOffsets = dataOffsets
        self.path = path
        self.isHuggingFaceFolder = true
        self.version = 3
        self.keys = keys
        self.metadata = metadata
        self.tensors = tensors
        var index: [String: Int] = [:]
        for (i, t) in tensors.enumerated() { index[t.name] = i }
        self.tensorIndex = index
        self.alignment = GGUFFile.defaultAlignment
        self.dataOffset = dataOffsets[0]
    }

    public init(file: MappedFile) throws(PunaError) {
        self.file = file
        self.files = [file]
        self.path = file.path
        self.isHuggingFaceFolder = false
        self.bitsAndBytes = nil
        var r = ByteReader(bytes: file.bytes, path: file.path)
        if file.count == 0 { throw PunaError("\(file.path): empty file, not a GGUF model") }
        let magic = try r.u32("magic")
        guard magic == 0x4655_4747 else {  // "GGUF" little-endian
            throw PunaError("\(file.path): not a GGUF file (magic bytes are not 'GGUF')")
        }
        version = try r.u32("version")
        guard version == 2 || version == 3 else {
            throw PunaError("\(file.path): unsupported GGUF version \(version) (Puna reads versions 2 and 3)")
        }
        let tensorCount = try r.count("tensor_count", minimumBytesEach: 24)
        let kvCount = try r.count("metadata_kv_count", minimumBytesEach: 13)

        var keys: [String] = []
        var metadata: [String: GGUFValue] = [:]
        keys.reserveCapacity(kvCount)
        for i in 0..<kvCount {
            let key = try r.string("metadata key #\(i)")
            let rawType = try r.u32("type of metadata '\(key)'")
            guard let type = GGUFValueType(rawValue: rawType) else {
                throw PunaError("\(file.path): metadata '\(key)' has unknown value type \(rawType)")
            }
            let value = try r.value(type, field: "metadata '\(key)'", depth: 0)
            if metadata[key] != nil { throw PunaError("\(file.path): duplicate metadata key '\(key)'") }
            metadata[key] = value
            keys.append(key)
        }

        var alignment = GGUFFile.defaultAlignment
        if let a = metadata["general.alignment"] {
            guard case .uint32(let v) = a else {
                throw PunaError("\(file.path): general.alignment must be u32, found \(a.type.name)")
            }
            guard v > 0, v & (v - 1) == 0 else {
                throw PunaError("\(file.path): general.alignment \(v) is not a power of two")
            }
            alignment = Int(v)
        }

        var infos: [GGUFTensorInfo] = []
        var index: [String: Int] = [:]
        infos.reserveCapacity(tensorCount)
        var rawOffsets: [UInt64] = []
        for i in 0..<tensorCount {
            let name = try r.string("name of tensor #\(i)")
            let nDims = try r.u32("n_dims of tensor '\(name)'")
            guard nDims >= 1, nDims <= UInt32(GGUFFile.maxDimensions) else {
                throw PunaError("\(file.path): tensor '\(name)' has \(nDims) dimensions (1 to \(GGUFFile.maxDimensions) allowed)")
            }
            var shape: [Int] = []
            // The product of the non-zero dimensions must fit too: with one zero dimension the element
            // count stays 0 however large the others are, and the row count is their product.
            var elements = 1, nonZero = 1
            for d in 0..<Int(nDims) {
                let dim = try r.u64("dimension \(d) of tensor '\(name)'")
                guard dim <= UInt64(Int.max) else {
                    throw PunaError("\(file.path): tensor '\(name)' dimension \(d) is \(dim), too large")
                }
                let (product, overflow) = elements.multipliedReportingOverflow(by: Int(dim))
                let (nonZeroProduct, nonZeroOverflow) = nonZero.multipliedReportingOverflow(by: max(Int(dim), 1))
                guard !overflow, !nonZeroOverflow else {
                    throw PunaError("\(file.path): tensor '\(name)' dimensions overflow (element count too large)")
                }
                elements = product
                nonZero = nonZeroProduct
                shape.append(Int(dim))
            }
            let rawType = try r.u32("type of tensor '\(name)'")
            let type = GGMLType(rawValue: rawType)
            guard type.isKnown else {
                throw PunaError("\(file.path): tensor '\(name)' has unknown type id \(rawType)")
            }
            guard shape[0] % type.blockSize == 0 else {
                throw PunaError("\(file.path): tensor '\(name)' row length \(shape[0]) is not a multiple of the \(type.name) block size \(type.blockSize)")
            }
            let (rowBytes, rowOverflow) = (shape[0] / type.blockSize).multipliedReportingOverflow(by: type.bytesPerBlock)
            let (bytes, overflow) = rowBytes.multipliedReportingOverflow(by: shape.dropFirst().reduce(1, *))
            guard !rowOverflow, !overflow else { throw PunaError("\(file.path): tensor '\(name)' byte size overflows") }
            let offset = try r.u64("offset of tensor '\(name)'")
            if index[name] != nil { throw PunaError("\(file.path): duplicate tensor name '\(name)'") }
            index[name] = infos.count
            rawOffsets.append(offset)
            infos.append(GGUFTensorInfo(name: name, shape: shape, type: type, offset: 0, byteCount: bytes))
        }

        let (padded, _) = r.position.addingReportingOverflow(alignment - 1)
        let dataOffset = padded / alignment * alignment
        let dataBytes = file.count - dataOffset
        if tensorCount > 0 && dataOffset > file.count {
            throw PunaError("\(file.path): truncated: tensor data section starts at byte \(dataOffset) but the file has \(file.count) bytes")
        }
        for i in 0..<infos.count {
            let t = infos[i]
            let offset = rawOffsets[i]
            guard offset % UInt64(alignment) == 0 else {
                throw PunaError("\(file.path): tensor '\(t.name)' offset \(offset) is not a multiple of the alignment \(alignment)")
            }
            guard offset <= UInt64(Int.max), Int(offset) <= dataBytes, t.byteCount <= dataBytes - Int(offset) else {
                throw PunaError("\(file.path): tensor '\(t.name)' data (offset \(offset), \(t.byteCount) bytes) lies past the end of the file (data section holds \(max(dataBytes, 0)) bytes)")
            }
            infos[i] = GGUFTensorInfo(name: t.name, shape: t.shape, type: t.type, offset: Int(offset), byteCount: t.byteCount)
        }

        self.keys = keys
        self.metadata = metadata
        self.tensors = infos
        self.tensorIndex = index
        self.alignment = alignment
        self.dataOffset = dataOffset
        self.dataOffsets = [dataOffset]
    }

    // MARK: tensors

    public func tensorInfo(_ name: String) -> GGUFTensorInfo? {
        tensorIndex[name].map { tensors[$0] }
    }

    /// The tensor's bytes, a view into the mapping.
    public func data(of tensor: GGUFTensorInfo) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: files[tensor.source].baseAddress! + dataOffsets[tensor.source] + tensor.offset, count: tensor.byteCount)
    }

    /// madvise a tensor's bytes in whichever file holds them.
    public func advise(_ tensor: GGUFTensorInfo, _ advice: MappedFile.Advice) {
        files[tensor.source].advise(offset: dataOffsets[tensor.source] + tensor.offset, count: tensor.byteCount, advice)
    }

    /// Bytes of every mapped file together.
    public var fileBytes: Int { files.reduce(0) { $0 + $1.count } }

    /// Total bytes of all tensor data.
    public var tensorBytes: Int { tensors.reduce(0) { $0 + $1.byteCount } }

    // MARK: metadata accessors

    public subscript(key: String) -> GGUFValue? { metadata[key] }

    public func int(_ key: String) -> Int? { metadata[key]?.intValue }
    public func double(_ key: String) -> Double? { metadata[key]?.doubleValue }
    public func float(_ key: String) -> Float? { metadata[key]?.doubleValue.map { Float($0) } }
    public func string(_ key: String) -> String? { metadata[key]?.stringValue }
    public func bool(_ key: String) -> Bool? { metadata[key]?.boolValue }

    public func stringArray(_ key: String) -> [String]? {
        guard case .array(.string, let values)? = metadata[key] else { return nil }
        return values.map { $0.stringValue ?? "" }
    }

    public func floatArray(_ key: String) -> [Float]? {
        guard case .array(_, let values)? = metadata[key] else { return nil }
        var out: [Float] = []
        out.reserveCapacity(values.count)
        for v in values {
            guard let d = v.doubleValue else { return nil }
            out.append(Float(d))
        }
        return out
    }

    public func intArray(_ key: String) -> [Int]? {
        guard case .array(_, let values)? = metadata[key] else { return nil }
        var out: [Int] = []
        out.reserveCapacity(values.count)
        for v in values {
            guard let i = v.intValue else { return nil }
            out.append(i)
        }
        return out
    }

    /// `general.architecture`, e.g. "llama".
    public var architecture: String? { string("general.architecture") }
}

/// Bounds-checked little-endian reads over the mapping.
struct ByteReader {
    let bytes: UnsafeRawBufferPointer
    let path: String
    var position = 0

    init(bytes: UnsafeRawBufferPointer, path: String) {
        self.bytes = bytes
        self.path = path
    }

    var remaining: Int { bytes.count - position }

    private func need(_ n: Int, _ field: String) throws(PunaError) {
        guard n <= remaining else {
            throw PunaError("\(path): truncated while reading \(field) at byte \(position) (needs \(n) bytes, \(remaining) left)")
        }
    }

    private mutating func load<T: FixedWidthInteger>(_: T.Type, _ field: String) throws(PunaError) -> T {
        try need(MemoryLayout<T>.size, field)
        let v = T(littleEndian: bytes.loadUnaligned(fromByteOffset: position, as: T.self))
        position += MemoryLayout<T>.size
        return v
    }

    mutating func u8(_ field: String) throws(PunaError) -> UInt8 { try load(UInt8.self, field) }
    mutating func u16(_ field: String) throws(PunaError) -> UInt16 { try load(UInt16.self, field) }
    mutating func u32(_ field: String) throws(PunaError) -> UInt32 { try load(UInt32.self, field) }
    mutating func u64(_ field: String) throws(PunaError) -> UInt64 { try load(UInt64.self, field) }

    /// A u64 count, refused when even the smallest encoding of that many items cannot fit in the
    /// rest of the file, so no absurd allocation ever happens.
    mutating func count(_ field: String, minimumBytesEach: Int) throws(PunaError) -> Int {
        let n = try u64(field)
        guard n <= UInt64(remaining / max(minimumBytesEach, 1)) else {
            throw PunaError("\(path): \(field) is \(n), more than the \(remaining) remaining bytes can hold")
        }
        return Int(n)
    }

    /// A string's bytes, a view into the mapping.
    mutating func stringBytes(_ field: String) throws(PunaError) -> UnsafeRawBufferPointer {
        let n = try u64("length of \(field)")
        guard n <= UInt64(remaining) else {
            throw PunaError("\(path): string length of \(field) is \(n), past the end of the file (\(remaining) bytes left)")
        }
        let view = UnsafeRawBufferPointer(start: bytes.baseAddress! + position, count: Int(n))
        position += Int(n)
        return view
    }

    /// A key or tensor name (bytes that are not UTF-8 become U+FFFD: names are compared as text).
    mutating func string(_ field: String) throws(PunaError) -> String {
        String(decoding: try stringBytes(field), as: UTF8.self)
    }

    mutating func value(_ type: GGUFValueType, field: String, depth: Int) throws(PunaError) -> GGUFValue {
        switch type {
        case .uint8: return .uint8(try u8(field))
        case .int8: return .int8(Int8(bitPattern: try u8(field)))
        case .uint16: return .uint16(try u16(field))
        case .int16: return .int16(Int16(bitPattern: try u16(field)))
        case .uint32: return .uint32(try u32(field))
        case .int32: return .int32(Int32(bitPattern: try u32(field)))
        case .float32: return .float32(Float(bitPattern: try u32(field)))
        case .bool:
            let b = try u8(field)
            guard b <= 1 else { throw PunaError("\(path): \(field) is a bool with value \(b)") }
            return .bool(b == 1)
        case .string:
            let bytes = try stringBytes(field)
            let s = String(decoding: bytes, as: UTF8.self)
            return s.utf8.elementsEqual(bytes) ? .string(s) : .invalidUTF8String(Array(bytes))
        case .uint64: return .uint64(try u64(field))
        case .int64: return .int64(Int64(bitPattern: try u64(field)))
        case .float64: return .float64(Double(bitPattern: try u64(field)))
        case .array:
            guard depth < GGUFFile.maxArrayNesting else {
                throw PunaError("\(path): \(field) nests arrays deeper than \(GGUFFile.maxArrayNesting) levels")
            }
            let rawElement = try u32("element type of \(field)")
            guard let element = GGUFValueType(rawValue: rawElement) else {
                throw PunaError("\(path): \(field) is an array of unknown value type \(rawElement)")
            }
            let n = try count("element count of \(field)", minimumBytesEach: element.minimumBytes)
            var values: [GGUFValue] = []
            values.reserveCapacity(n)
            for i in 0..<n {
                values.append(try value(element, field: "\(field)[\(i)]", depth: depth + 1))
            }
            return .array(element, values)
        }
    }
}
