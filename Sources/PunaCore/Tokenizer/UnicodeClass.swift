/// Unicode classes of code points for the pre-tokenizers, from the generated `UnicodeTables`
/// (see scripts/unicode/make_tables.py for the pinned Unicode version).
enum UnicodeClass {
    static let letter: UInt8 = 0x01       // \p{L}
    static let number: UInt8 = 0x02       // \p{N}
    static let punctuation: UInt8 = 0x04  // \p{P}
    static let symbol: UInt8 = 0x08       // \p{S}
    static let mark: UInt8 = 0x10         // \p{M}
    static let space: UInt8 = 0x20        // \s (White_Space)
    static let upper: UInt8 = 0x40        // \p{Lu} or \p{Lt}
    static let lower: UInt8 = 0x80        // \p{Ll}

    /// Flags of the 128 ASCII code points, looked up once.
    static let ascii: [UInt8] = (0..<128).map { lookup(UInt32($0)) }

    @inline(__always) static func of(_ cp: UInt32) -> UInt8 {
        cp < 128 ? ascii[Int(cp)] : lookup(cp)
    }

    /// Binary search for the last range starting at or before `cp`.
    static func lookup(_ cp: UInt32) -> UInt8 {
        let starts = UnicodeTables.rangeStarts
        var lo = 0, hi = starts.count  // invariant: starts[lo] <= cp < starts[hi]
        while hi - lo > 1 {
            let mid = (lo + hi) >> 1
            if starts[mid] <= cp { lo = mid } else { hi = mid }
        }
        return UnicodeTables.rangeFlags[lo]
    }

    /// Decodes UTF-8 into code points and the byte offset where each starts (plus the end offset).
    /// A byte that does not start a valid sequence stands alone as U+FFFD, as llama.cpp reads it.
    static func decode(_ text: UnsafeBufferPointer<UInt8>, codePoints: inout [UInt32], offsets: inout [Int32]) {
        codePoints.removeAll(keepingCapacity: true)
        offsets.removeAll(keepingCapacity: true)
        let n = text.count
        var i = 0
        while i < n {
            let b0 = text[i]
            offsets.append(Int32(i))
            if b0 < 0x80 {
                codePoints.append(UInt32(b0))
                i += 1
                continue
            }
            var cp: UInt32 = 0xFFFD
            var len = 1
            @inline(__always) func cont(_ k: Int) -> UInt32? {
                guard i + k < n else { return nil }
                let b = text[i + k]
                return b & 0xC0 == 0x80 ? UInt32(b & 0x3F) : nil
            }
            if b0 & 0xE0 == 0xC0 {
                if let c1 = cont(1) {
                    let v = UInt32(b0 & 0x1F) << 6 | c1
                    if v >= 0x80 { cp = v; len = 2 }
                }
            } else if b0 & 0xF0 == 0xE0 {
                if let c1 = cont(1), let c2 = cont(2) {
                    let v = UInt32(b0 & 0x0F) << 12 | c1 << 6 | c2
                    if v >= 0x800 && !(0xD800...0xDFFF).contains(v) { cp = v; len = 3 }
                }
            } else if b0 & 0xF8 == 0xF0 {
                if let c1 = cont(1), let c2 = cont(2), let c3 = cont(3) {
                    let v = UInt32(b0 & 0x07) << 18 | c1 << 12 | c2 << 6 | c3
                    if v >= 0x10000 && v <= 0x10FFFF { cp = v; len = 4 }
                }
            }
            codePoints.append(cp)
            i += len
        }
        offsets.append(Int32(n))
    }
}
