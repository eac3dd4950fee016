/// The GPT-2 byte-level alphabet: every byte stands for one printable code point, so that any byte
/// string is a string of visible characters. Printable Latin-1 bytes (`!`..`~`, `¡`..`¬`, `®`..`ÿ`)
/// stand for themselves; the other 68 bytes, in increasing order, take U+0100, U+0101, ...
enum ByteLevel {
    /// The code point standing for each byte.
    static let codePointOfByte: [UInt32] = {
        var table = [UInt32](repeating: 0, count: 256)
        var next: UInt32 = 0x100
        for b in 0..<256 {
            if (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b) {
                table[b] = UInt32(b)
            } else {
                table[b] = next
                next += 1
            }
        }
        return table
    }()

    /// The bytes standing as U+0100 + k, in order of k.
    static let extendedBytes: [UInt8] = (0..<256).compactMap { b in
        codePointOfByte[b] >= 0x100 ? UInt8(b) : nil
    }

    /// The byte a code point stands for, -1 if it stands for none.
    static func byte(ofCodePoint cp: UInt32) -> Int {
        if cp < 0x100 {
            let b = Int(cp)
            return (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b) ? b : -1
        }
        if cp < 0x100 + 68 { return Int(extendedBytes[Int(cp - 0x100)]) }
        return -1
    }

    /// Appends the UTF-8 of the code point standing for `byte` (one or two bytes).
    @inline(__always) static func appendEncoded(_ byte: UInt8, to out: inout [UInt8]) {
        let cp = codePointOfByte[Int(byte)]
        if cp < 0x80 {
            out.append(UInt8(cp))
        } else {
            out.append(UInt8(0xC0 | (cp >> 6)))
            out.append(UInt8(0x80 | (cp & 0x3F)))
        }
    }

    /// The bytes a byte-level piece stands for; nil if it holds a character outside the alphabet.
    static func decode(_ piece: ArraySlice<UInt8>) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(piece.count)
        var i = piece.startIndex
        while i < piece.endIndex {
            let b0 = piece[i]
            var cp: UInt32
            if b0 < 0x80 {
                cp = UInt32(b0)
                i += 1
            } else if b0 & 0xE0 == 0xC0, i + 1 < piece.endIndex, piece[i + 1] & 0xC0 == 0x80 {
                cp = UInt32(b0 & 0x1F) << 6 | UInt32(piece[i + 1] & 0x3F)
                i += 2
            } else {
                return nil
            }
            let b = byte(ofCodePoint: cp)
            if b < 0 { return nil }
            out.append(UInt8(b))
        }
        return out
    }

    /// Whether the bytes are well-formed UTF-8.
    static func isValidUTF8(_ bytes: [UInt8]) -> Bool {
        var cps: [UInt32] = []
        var offsets: [Int32] = []
        bytes.withUnsafeBufferPointer { UnicodeClass.decode($0, codePoints: &cps, offsets: &offsets) }
        for k in 0..<cps.count where cps[k] == 0xFFFD {
            // a real U+FFFD is three bytes EF BF BD; a replaced bad byte is one
            if offsets[k + 1] - offsets[k] != 3 { return false }
        }
        return true
    }
}
