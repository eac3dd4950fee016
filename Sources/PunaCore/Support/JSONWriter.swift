import CPuna

/// A small streaming JSON writer (no Foundation). Floats are written with the fewest digits that
/// read back to the same Float; non-finite values become null, as JSON has no NaN or infinity.
public struct JSONWriter {
    public private(set) var bytes: [UInt8] = []
    private var needsComma: [Bool] = [false]

    public init() {}

    public var string: String { String(decoding: bytes, as: UTF8.self) }

    private mutating func separator() {
        if needsComma[needsComma.count - 1] { bytes.append(UInt8(ascii: ",")) }
        needsComma[needsComma.count - 1] = true
    }

    public mutating func beginObject() { separator(); bytes.append(UInt8(ascii: "{")); needsComma.append(false) }
    public mutating func endObject() { needsComma.removeLast(); bytes.append(UInt8(ascii: "}")) }
    public mutating func beginArray() { separator(); bytes.append(UInt8(ascii: "[")); needsComma.append(false) }
    public mutating func endArray() { needsComma.removeLast(); bytes.append(UInt8(ascii: "]")) }

    /// Write an object key; the next value written is its value.
    public mutating func key(_ k: String) {
        separator()
        appendQuoted(k)
        bytes.append(UInt8(ascii: ":"))
        needsComma[needsComma.count - 1] = false
    }

    public mutating func value(_ s: String) { separator(); appendQuoted(s) }
    public mutating func value(_ i: Int) { separator(); bytes.append(contentsOf: String(i).utf8) }
    public mutating func value(_ b: Bool) { separator(); bytes.append(contentsOf: (b ? "true" : "false").utf8) }
    public mutating func null() { separator(); bytes.append(contentsOf: "null".utf8) }

    public mutating func value(_ f: Float) {
        separator()
        guard f.isFinite else { bytes.append(contentsOf: "null".utf8); return }
        var buf = [CChar](repeating: 0, count: 40)
        let n = buf.withUnsafeMutableBufferPointer { Int(puna_format_float(f, $0.baseAddress)) }
        for i in 0..<n { bytes.append(UInt8(bitPattern: buf[i])) }
    }

    public mutating func value(_ d: Double, decimals: Int) {
        separator()
        guard d.isFinite else { bytes.append(contentsOf: "null".utf8); return }
        var buf = [CChar](repeating: 0, count: 64)
        // puna_format_double writes at most 64 bytes but returns the length it wanted.
        let n = min(buf.withUnsafeMutableBufferPointer { Int(puna_format_double(d, Int32(decimals), $0.baseAddress)) }, 63)
        for i in 0..<n { bytes.append(UInt8(bitPattern: buf[i])) }
    }

    public mutating func field(_ k: String, _ v: String) { key(k); value(v) }
    public mutating func field(_ k: String, _ v: Int) { key(k); value(v) }
    public mutating func field(_ k: String, _ v: Bool) { key(k); value(v) }
    public mutating func field(_ k: String, _ v: Float) { key(k); value(v) }

    public mutating func appendQuoted(_ s: String) {
        bytes.append(UInt8(ascii: "\""))
        for c in s.utf8 {
            switch c {
            case UInt8(ascii: "\""): bytes.append(contentsOf: [92, 34])
            case UInt8(ascii: "\\"): bytes.append(contentsOf: [92, 92])
            case 0x0A: bytes.append(contentsOf: [92, UInt8(ascii: "n")])
            case 0x0D: bytes.append(contentsOf: [92, UInt8(ascii: "r")])
            case 0x09: bytes.append(contentsOf: [92, UInt8(ascii: "t")])
            case 0..<0x20:
                let hex: [UInt8] = Array("0123456789abcdef".utf8)
                bytes.append(contentsOf: [92, UInt8(ascii: "u"), 48, 48, hex[Int(c >> 4)], hex[Int(c & 15)]])
            default: bytes.append(c)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
}
