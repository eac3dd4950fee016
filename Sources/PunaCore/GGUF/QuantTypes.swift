import CPuna

/// A GGML tensor type id, with its layout read from CPuna's single type table
/// (`puna_type_table`, derived from the block structs in `puna_quants.h`).
public struct GGMLType: Hashable, CustomStringConvertible {
    public let rawValue: UInt32

    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let f32 = GGMLType(rawValue: 0)
    public static let f16 = GGMLType(rawValue: 1)
    public static let q4_0 = GGMLType(rawValue: 2)
    public static let q4_1 = GGMLType(rawValue: 3)
    public static let q5_0 = GGMLType(rawValue: 6)
    public static let q5_1 = GGMLType(rawValue: 7)
    public static let q8_0 = GGMLType(rawValue: 8)
    public static let q4_K = GGMLType(rawValue: 12)
    public static let q5_K = GGMLType(rawValue: 13)
    public static let q6_K = GGMLType(rawValue: 14)
    public static let bf16 = GGMLType(rawValue: 30)
    /// bitsandbytes weights read in place from a Hugging Face folder (puna_bnb.h): not GGML types;
    /// the kernels take a descriptor of the weight's tensors instead of its rows.
    public static let bnb4 = GGMLType(rawValue: UInt32(PUNA_TYPE_BNB4))
    public static let bnbInt8 = GGMLType(rawValue: UInt32(PUNA_TYPE_BNB_INT8))

    /// A bitsandbytes pseudo-type: no blocks of its own, so no row bytes, decode or encode.
    public var isBitsAndBytes: Bool { self == .bnb4 || self == .bnbInt8 }

    /// Every id GGML has assigned, in id order.
    public static var all: [GGMLType] {
        var out: [GGMLType] = []
        for id in 0..<UInt32(PUNA_TYPE_COUNT.rawValue) where GGMLType(rawValue: id).isKnown {
            out.append(GGMLType(rawValue: id))
        }
        return out
    }

    /// Look a type up by GGML's name ("q4_0", "Q4_K", "f16"), case-insensitive.
    public init?(name: String) {
        let wanted = name.lowercased()
        for t in GGMLType.all where t.name.lowercased() == wanted {
            self = t
            return
        }
        return nil
    }

    private var info: puna_type_info? {
        guard rawValue < UInt32(PUNA_TYPE_COUNT.rawValue) else { return nil }
        let entry = withUnsafePointer(to: puna_type_table) {
            $0.withMemoryRebound(to: puna_type_info.self, capacity: Int(PUNA_TYPE_COUNT.rawValue)) { $0[Int(rawValue)] }
        }
        return entry.name == nil ? nil : entry
    }

    /// Whether GGML ever assigned this id.
    public var isKnown: Bool { info != nil }
    public var name: String {
        if self == .bnb4 { return "bnb-4bit" }
        if self == .bnbInt8 { return "bnb-int8" }
        return info.map { String(cString: $0.name) } ?? "type#\(rawValue)"
    }
    /// Weights per block.
    public var blockSize: Int { Int(info?.block_size ?? 0) }
    /// Bytes per block.
    public var bytesPerBlock: Int { Int(info?.type_size ?? 0) }
    public var canDecode: Bool { info?.decode != nil }
    public var canEncode: Bool { info?.encode != nil }
    public var isQuantized: Bool { blockSize > 1 }
    public var description: String { name }

    /// Bytes of a row of `n` weights, nil when n is not a whole number of blocks.
    public func rowBytes(_ n: Int) -> Int? {
        guard blockSize > 0, n >= 0, n % blockSize == 0 else { return nil }
        return (n / blockSize) * bytesPerBlock
    }

    /// Decode `count` weights (a whole number of blocks) to f32.
    public func decode(_ blocks: UnsafeRawPointer, into out: UnsafeMutablePointer<Float>, count: Int) throws(PunaError) {
        guard let fn = info?.decode else { throw PunaError("decoding \(name) is not supported") }
        guard count % blockSize == 0 else { throw PunaError("\(count) weights are not whole \(name) blocks of \(blockSize)") }
        fn(blocks, out, Int64(count))
    }

    /// Encode `count` floats (a whole number of blocks) into this type's blocks.
    public func encode(_ values: UnsafePointer<Float>, into blocks: UnsafeMutableRawPointer, count: Int) throws(PunaError) {
        guard let fn = info?.encode else { throw PunaError("encoding to \(name) is not supported") }
        guard count % blockSize == 0 else { throw PunaError("\(count) weights are not whole \(name) blocks of \(blockSize)") }
        fn(values, blocks, Int64(count))
    }

    /// Decode a whole buffer of blocks into a new array.
    public func decode(_ bytes: UnsafeRawBufferPointer, count: Int) throws(PunaError) -> [Float] {
        guard let need = rowBytes(count), need <= bytes.count, let base = bytes.baseAddress else {
            throw PunaError("\(bytes.count) bytes do not hold \(count) \(name) weights")
        }
        var out = [Float](repeating: 0, count: count)
        var failure: PunaError? = nil
        out.withUnsafeMutableBufferPointer { o in
            do throws(PunaError) { try decode(base, into: o.baseAddress!, count: count) } catch { failure = error }
        }
        if let failure { throw failure }
        return out
    }

    /// Encode an array into a new byte array.
    public func encode(_ values: [Float]) throws(PunaError) -> [UInt8] {
        guard let need = rowBytes(values.count) else {
            throw PunaError("\(values.count) weights are not whole \(name) blocks of \(blockSize)")
        }
        var out = [UInt8](repeating: 0, count: need)
        var failure: PunaError? = nil
        values.withUnsafeBufferPointer { v in
            out.withUnsafeMutableBytes { o in
                do throws(PunaError) { try encode(v.baseAddress!, into: o.baseAddress!, count: values.count) } catch { failure = error }
            }
        }
        if let failure { throw failure }
        return out
    }
}
